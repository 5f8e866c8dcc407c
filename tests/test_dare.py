"""DARE masks: both random streams, pinned so that a change of stream cannot pass unnoticed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realignkit.ops.dare import DARE_STREAMS, dare, dare_keep_mask, drop_threshold, tensor_seed

NAME = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("stream", DARE_STREAMS)
def test_each_stream_drops_p_and_rescales_exactly(stream: str) -> None:
    delta = torch.randn(300, 700)
    p = 0.3
    keep = dare_keep_mask(delta.shape, p, 7, NAME, stream)
    dropped = dare(delta, p, 7, NAME, stream)
    # 210k Bernoulli(0.3) draws: sd of the share ≈ 0.001
    assert abs((~keep).float().mean().item() - p) < 0.006
    assert torch.equal(dropped[keep], delta[keep] / (1 - p))
    assert torch.all(dropped[~keep] == 0)
    assert torch.equal(keep, dare_keep_mask(delta.shape, p, 7, NAME, stream))
    assert not torch.equal(keep, dare_keep_mask(delta.shape, p, 8, NAME, stream))
    assert not torch.equal(keep, dare_keep_mask(delta.shape, p, 7, NAME + "x", stream))


def test_pcg64_masks_are_pinned() -> None:
    got = dare_keep_mask((3, 8), 0.5, 0, NAME, "pcg64").int().tolist()
    assert got == [[0, 0, 1, 0, 1, 0, 1, 1], [1, 1, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1, 1, 1]]


def test_mt19937_is_the_stream_of_earlier_outputs() -> None:
    """One float32 per entry from torch's generator seeded by (seed, name): realignkit 0.1."""
    generator = torch.Generator().manual_seed(tensor_seed(0, NAME))
    earlier = torch.rand((3, 8), generator=generator) >= 0.5
    assert torch.equal(dare_keep_mask((3, 8), 0.5, 0, NAME, "mt19937"), earlier)
    got = earlier.int().tolist()
    assert got == [[0, 0, 0, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0]]


def test_pcg64_drop_probability_is_p_rounded_to_a_multiple_of_2_to_the_minus_16() -> None:
    assert drop_threshold(0.3) == 19661  # round(0.3 · 65536)
    assert drop_threshold(0.0) == 0
    assert abs(drop_threshold(0.3) / 65536 - 0.3) <= 2**-17
    # the mask is exactly "lane >= threshold" on the stream's 16-bit lanes
    keep = dare_keep_mask((1000,), 0.3, 1, NAME, "pcg64").numpy()
    assert keep.dtype == np.bool_ and keep.shape == (1000,)


def test_a_shape_that_is_not_a_multiple_of_four_lanes_works() -> None:
    keep = dare_keep_mask((3, 5, 7), 0.25, 0, NAME)
    assert keep.shape == (3, 5, 7)


def test_unknown_stream_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="pcg64, mt19937"):
        dare_keep_mask((2, 2), 0.3, 0, NAME, "philox")  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", DARE_STREAMS)
def test_mask_pieces_are_the_whole_mask_cut_up(stream: str) -> None:
    """A tensor edited piece by piece sees exactly the mask drawn whole, whatever the piece."""
    from realignkit.ops.dare import keep_chunks

    whole = dare_keep_mask((37, 29), 0.3, 5, NAME, stream).reshape(-1).numpy()
    for piece in (4, 8, 36, 1072, 5000):
        pieces = list(keep_chunks((37, 29), 0.3, 5, NAME, stream, piece))
        assert [len(c) for c in pieces[:-1]] == [piece] * (len(pieces) - 1)
        assert np.array_equal(np.concatenate(pieces), whole)
    with pytest.raises(ValueError, match="multiple of 4"):
        keep_chunks((37, 29), 0.3, 5, NAME, stream, 6)


@pytest.mark.parametrize("stream", DARE_STREAMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_resta_piece_by_piece_gives_the_bits_of_one_pass(
    stream: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resta_tensor in pieces (a last piece shorter) equals the formula computed whole in
    fp32 and rounded once, bit for bit, with and without DARE and for a mixed-dtype v."""
    from realignkit.methods import resta

    gen = torch.Generator().manual_seed(3)
    shape = (53, 31)
    f, b = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(shape, generator=gen).to(torch.float32)
    monkeypatch.setattr(resta, "PIECE", 64)
    for drop in (0.0, 0.3):
        got = resta.resta_tensor(f, v, 0.5, theta_b=b, drop_p=drop, name=NAME, dare_stream=stream)
        theta = f.float()
        if drop:
            keep = dare_keep_mask(shape, drop, 0, NAME, stream)
            theta = b.float() + ((theta - b.float()) / (1 - drop)) * keep
        expected = theta.add(v, alpha=0.5).to(dtype)
        assert got.dtype == dtype
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
