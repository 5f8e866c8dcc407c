"""DARE (Drop And REscale, Yu et al. 2023) on a delta tensor.

Each entry of the delta is dropped with probability ``p`` and the kept entries are divided by
``1 − p``, so the expected delta is unchanged. This is the DARE paper's rescale, which RESTA
uses; mergekit's ``dare`` methods can instead rescale to preserve the L1 norm, which is a
different operator.

The mask of a tensor comes from a generator keyed by (seed, tensor name) alone: results never
depend on the order tensors are processed in or on the number of threads. Two streams:

- ``pcg64`` (default): numpy's PCG64DXSM, read as raw 64-bit words and split into four 16-bit
  lanes, one per entry. An entry is dropped when its lane is below ``round(p · 2¹⁶)``, so the
  drop probability is ``p`` rounded to a multiple of 2⁻¹⁶ (|error| ≤ 7.7e-6). At 2 bytes of
  random bits per entry the mask costs a fraction of reading the tensor (measured in
  ``benchmarks/bench_resta.py``). PCG64DXSM is seekable (``advance``), like a counter-based
  generator; numpy's Philox, the counter-based one, measured 6× slower here (0.43 GB/s
  against 2.6 GB/s of raw bits on this project's CPU).
- ``mt19937``: torch's CPU generator drawing one float32 per entry (4 bytes, ~6× the cost),
  the stream of realignkit ≤ 0.1 outputs; kept so earlier results can be reproduced.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

DareStream = Literal["pcg64", "mt19937"]
DARE_STREAMS: tuple[str, ...] = ("pcg64", "mt19937")
LANE_BITS = 16


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the run seed and the tensor's name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def drop_threshold(p: float) -> int:
    """The 16-bit lane value below which an entry is dropped: ``round(p · 2¹⁶)``."""
    return round(p * (1 << LANE_BITS))


def keep_chunks(
    shape: torch.Size | tuple[int, ...],
    p: float,
    seed: int,
    name: str,
    stream: DareStream = "pcg64",
    chunk: int | None = None,
) -> Iterator[np.ndarray]:
    """The flattened keep mask of :func:`dare_keep_mask`, in consecutive boolean pieces of
    ``chunk`` entries (the last one shorter; ``chunk`` a multiple of 4, None: one piece).

    PCG64DXSM's stream continues from call to call, so the pieces are those of one draw,
    whatever ``chunk``: a caller editing a tensor piece by piece holds one piece of random
    bits at a time. The mt19937 stream is drawn whole (torch's draws depend on the size).
    """
    if stream not in DARE_STREAMS:
        raise ValueError(f"unknown DARE random stream {stream!r}; known: {', '.join(DARE_STREAMS)}")
    count = math.prod(shape)
    chunk = max(count, 1) if chunk is None else chunk
    if chunk < count and chunk % 4:
        raise ValueError(f"DARE mask pieces must be a multiple of 4 entries, got {chunk}")
    return _pieces(tuple(shape), count, chunk, p, seed, name, stream)


def _pieces(
    shape: tuple[int, ...], count: int, chunk: int, p: float, seed: int, name: str, stream: str
) -> Iterator[np.ndarray]:
    if stream == "mt19937":
        generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
        whole = (torch.rand(shape, generator=generator, dtype=torch.float32) >= p).numpy()
        for start in range(0, count, chunk):
            yield whole.reshape(-1)[start : start + chunk]
        return
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    generator = np.random.PCG64DXSM(np.random.SeedSequence(int.from_bytes(digest, "little")))
    threshold = np.uint16(drop_threshold(p)) if p < 1 else np.uint32(1 << LANE_BITS)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        words = generator.random_raw(math.ceil(size / 4))  # 4 lanes per 64-bit word
        yield np.greater_equal(words.view(np.uint16)[:size], threshold)


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    seed: int,
    name: str,
    stream: DareStream = "pcg64",
) -> torch.Tensor:
    """Boolean mask of kept entries: each kept with probability ``1 − p``."""
    pieces = list(keep_chunks(shape, p, seed, name, stream))
    keep = pieces[0] if pieces else np.zeros(0, dtype=bool)
    return torch.from_numpy(keep).reshape(tuple(shape))


def dare(
    delta: torch.Tensor, p: float, seed: int, name: str, stream: DareStream = "pcg64"
) -> torch.Tensor:
    """Drop entries of ``delta`` with probability ``p``; rescale the rest by ``1 / (1 − p)``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {p}")
    if p == 0.0:
        return delta
    keep = dare_keep_mask(delta.shape, p, seed, name, stream)
    # Divide (not multiply by 1/(1−p)): kept entries are exactly δ/(1−p). Multiplying by the
    # boolean mask is cheaper than torch.where and zeroes the dropped entries.
    return (delta / (1.0 - p)).mul_(keep)
