"""The checkpoint layer: streaming reads, adapters, atomic sharded writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_folder_tensors
from safetensors.torch import load_file
from tiny import ARCHITECTURES, build_tiny_model, save_tiny_model

from realignkit.checkpoint import CheckpointReader, CheckpointWriter, FinetunedWeights
from realignkit.errors import RealignError


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reader_streams_every_tensor_of_a_sharded_checkpoint(tmp_path: Path, arch: str) -> None:
    model = build_tiny_model(arch)
    folder = save_tiny_model(arch, tmp_path / arch, model=model)
    assert (folder / "model.safetensors.index.json").exists()  # sharded on purpose
    on_disk = load_folder_tensors(folder)
    with CheckpointReader(folder) as ckpt:
        assert sorted(ckpt.names) == sorted(on_disk)
        for name in ckpt.names:
            tensor = ckpt.get(name)
            assert ckpt.shape(name) == tuple(tensor.shape)
            assert torch.equal(tensor, on_disk[name])
        assert ckpt.architecture == model.config.architectures[0]


def test_reader_names_a_truncated_shard(tmp_path: Path) -> None:
    folder = save_tiny_model("llama", tmp_path / "m")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(RealignError, match=f"{shard.name} is truncated: tensor"):
        CheckpointReader(folder)


def test_reader_refuses_pickle_unless_asked(tmp_path: Path) -> None:
    model = build_tiny_model("llama")
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(RealignError, match="--allow-pickle"):
        CheckpointReader(folder)
    with CheckpointReader(folder, allow_pickle=True) as ckpt:
        name = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(ckpt.get(name), model.state_dict()[name])


def test_reader_rejects_nan(tmp_path: Path) -> None:
    model = build_tiny_model("qwen2")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    folder = save_tiny_model("qwen2", tmp_path / "nan", model=model)
    with CheckpointReader(folder) as ckpt, pytest.raises(RealignError, match="down_proj.*NaN"):
        ckpt.get("model.layers.1.mlp.down_proj.weight")


def test_wrong_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RealignError, match="not found"):
        CheckpointReader(tmp_path / "nope")


def test_writer_shards_indexes_and_renames_at_the_end(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.randn(64, 64) for i in range(5)}  # 16 KiB each
    out = tmp_path / "out"
    with CheckpointWriter(out, max_shard_size="40KB") as writer:
        for name, t in tensors.items():
            writer.add(name, t)
            assert not out.exists()  # nothing visible until the end
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    back = load_folder_tensors(out)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_writer_leaves_nothing_after_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError), CheckpointWriter(out, max_shard_size="1KB") as writer:
        writer.add("a", torch.ones(1000))
        _ = 1 / 0
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_only_its_own_output_and_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(RealignError, match="exists"):
        CheckpointWriter(out)
    with pytest.raises(RealignError, match="not written by realignkit"):
        CheckpointWriter(out, overwrite=True)  # a user's own folder is never deleted
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    out.rmdir()
    with CheckpointWriter(out) as writer:
        writer.add("a", torch.ones(3))
    assert (out / "realignkit.json").is_file()
    with CheckpointWriter(out, overwrite=True) as writer:
        writer.add("b", torch.ones(2))
    assert load_file(out / "model.safetensors").keys() == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left beside it


def test_writer_swaps_atomically_and_clears_stale_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with CheckpointWriter(out) as writer:
        writer.add("a", torch.ones(3))
    stale = tmp_path / ".out.tmp-999999999-deadbeef"  # a killed run's (its PID is gone)
    stale.mkdir()
    old_style = tmp_path / ".out.tmp-cafe1234"
    old_style.mkdir()
    with CheckpointWriter(out, overwrite=True) as writer:
        assert not stale.exists() and not old_style.exists()
        writer.add("a", torch.zeros(3))
        # The old output is intact until the new one is complete.
        assert load_file(out / "model.safetensors")["a"].sum() == 3
    assert load_file(out / "model.safetensors")["a"].sum() == 0


def _peft_adapter(arch: str, base, folder: Path, **lora_kwargs) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, **lora_kwargs))
    with torch.no_grad():  # PEFT initialises B to zero: give the adapter a real delta
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(folder)
    return folder


ADAPTER_CASES = {
    "llama": dict(
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        use_rslora=True,
        rank_pattern={"layers.1.self_attn.q_proj": 2},
        alpha_pattern={"layers.0.mlp.down_proj": 3},
        modules_to_save=["lm_head"],
    ),
    "gpt2": dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "qwen2": dict(target_modules=["k_proj", "o_proj", "gate_proj"]),
}


@pytest.mark.parametrize("arch", sorted(ADAPTER_CASES))
def test_adapter_deltas_match_peft_merge_and_unload(tmp_path: Path, arch: str) -> None:
    import copy

    base = build_tiny_model(arch)
    base_dir = save_tiny_model(arch, tmp_path / "base", model=base)
    adapter_dir = _peft_adapter(arch, copy.deepcopy(base), tmp_path / "lora", **ADAPTER_CASES[arch])
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir).merge_and_unload()
    expected = merged.state_dict()
    with FinetunedWeights(base=base_dir, adapter=adapter_dir) as ft:
        changed = 0
        for name in ft.names:
            got = ft.get(name)
            torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6, msg=name)
            changed += not torch.equal(got, base.state_dict()[name])
        assert changed >= len(ADAPTER_CASES[arch]["target_modules"])


def test_adapter_for_another_model_is_refused(tmp_path: Path) -> None:
    import copy

    llama = build_tiny_model("llama")
    adapter_dir = _peft_adapter(
        "llama", copy.deepcopy(llama), tmp_path / "lora", target_modules=["q_proj"]
    )
    gpt2_dir = save_tiny_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(RealignError, match="q_proj.weight', which is not in model"):
        FinetunedWeights(base=gpt2_dir, adapter=adapter_dir)


def test_planned_writer_streams_to_final_shards(tmp_path: Path) -> None:
    from realignkit.checkpoint.writer import TensorSpec

    tensors = {f"t{i}": torch.randn(64, 64).to(torch.bfloat16) for i in range(5)}
    tensors["flag"] = torch.tensor([True, False])
    plan = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    out = tmp_path / "out"
    with CheckpointWriter(out, max_shard_size="20KB", plan=plan) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
        with pytest.raises(RuntimeError, match="not the next one"):
            writer.add("extra", torch.ones(1))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    back = load_folder_tensors(out)  # read back by the safetensors library itself
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_planned_writer_refuses_an_incomplete_output(tmp_path: Path) -> None:
    from realignkit.checkpoint.writer import TensorSpec

    plan = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (2,), torch.float32)]
    with (
        pytest.raises(RealignError, match="'b' was never written"),
        CheckpointWriter(tmp_path / "out", plan=plan) as writer,
    ):
        writer.add("a", torch.ones(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_direct_io_writes_and_reads_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, io: str
) -> None:
    """Shards written through the aligned staging buffer (odd sizes, tensors crossing the
    buffer's edge, a tail cut back to the true size) and tensors read with O_DIRECT at
    unaligned offsets are byte for byte those of the buffered paths and of safetensors."""
    import os

    from realignkit.checkpoint import direct
    from realignkit.checkpoint.writer import TensorSpec

    monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(direct, "STAGE_BYTES", 2 * direct.ALIGN)
    if io == "buffered":  # a file system without direct I/O
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"t{i}": torch.randn(size, generator=gen).to(dtype)
        for i, (size, dtype) in enumerate(
            [((3,), torch.bfloat16), ((1021, 3), torch.float32), ((4096,), torch.bfloat16)]
            + [((7, 333), torch.float16), ((5000,), torch.float32), ((1,), torch.bfloat16)]
        )
    }
    plan = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    with CheckpointWriter(tmp_path / "out", max_shard_size="30KB", plan=plan) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
    back = load_folder_tensors(tmp_path / "out")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    with CheckpointReader(tmp_path / "out") as reader:
        assert all(torch.equal(reader.get(k), v) for k, v in tensors.items())
        direct_reads = [fd for fd in reader._direct.values() if fd is not None]
        assert bool(direct_reads) == (io == "direct" and hasattr(os, "O_DIRECT"))
