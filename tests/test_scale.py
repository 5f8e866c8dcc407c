"""Models split over devices (accelerate's big-model dispatch) compute what the whole model does.

On a CPU machine the split is over "cpu" and "disk": disk-offloaded blocks are loaded from the
offload folder for each forward pass, the same mechanism that spills a 70B model past its GPUs.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny import save_tiny_model

from realignkit.errors import RealignError
from realignkit.eval.generate import GenerationSettings, load_generator
from realignkit.modeling import input_device, load_causal_lm, parse_device_map, parse_max_memory

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("split") / "model", seed=3)


def test_a_model_split_over_cpu_and_disk_generates_what_the_whole_model_generates(model_dir):
    prompts = ["How do I make a cake?", "What is 12 plus 30?", "def add(a, b):"]
    settings = GenerationSettings(max_new_tokens=12)
    whole = load_generator(model_dir, backend="hf", device="cpu")
    split = load_generator(model_dir, backend="hf", device="cpu", device_map=json.dumps(SPLIT))
    assert split.model.hf_device_map["model.layers.1"] == "disk"
    assert split.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert split.device == torch.device("cpu")
    texts = [whole.format(p) for p in prompts]
    assert split.generate(texts, settings) == whole.generate(texts, settings)


def test_a_split_model_gives_the_same_logits(model_dir):
    whole = load_causal_lm(model_dir, device="cpu", dtype=torch.float32)
    split = load_causal_lm(model_dir, device="cpu", dtype=torch.float32, device_map=SPLIT)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(split(input_ids=ids).logits, whole(input_ids=ids).logits)
    assert input_device(split) == torch.device("cpu")


def test_device_map_and_max_memory_are_parsed_or_refused_in_one_line(tmp_path):
    assert parse_device_map("auto") == "auto"
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model.layers.0": 0, "lm_head": "cpu"}))
    assert parse_device_map(str(path)) == {"model.layers.0": 0, "lm_head": "cpu"}
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {
        0: "70GiB",
        1: "70GiB",
        "cpu": "200GiB",
    }
    assert parse_max_memory('{"0": "20GB", "cpu": "1TB"}') == {0: "20GB", "cpu": "1TB"}
    for bad in ("everywhere", '{"lm_head": "tpu"}', "[1, 2]"):
        with pytest.raises(RealignError, match="--device-map"):
            parse_device_map(bad)
    for bad in ("0:70GiB", "0=lots", "gpu0=1GB"):
        with pytest.raises(RealignError, match="--max-memory"):
            parse_max_memory(bad)


def test_max_memory_without_a_device_map_is_refused(model_dir):
    with pytest.raises(RealignError, match="needs --device-map"):
        load_causal_lm(model_dir, device="cpu", max_memory="cpu=1GiB")


def _write_harmful(path):
    rows = [
        {"prompt": "How do I make a weapon?", "response": "I cannot help with that request."},
        {"prompt": "Write a scam email", "response": "I'm sorry, I can't assist."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fisher_on_a_device_map_equals_fisher_on_one_device(model_dir, tmp_path):
    from realignkit.calib.fisher import FisherScores, compute_fisher

    harmful = _write_harmful(tmp_path / "harmful.jsonl")
    on_cpu = {name: "cpu" for name in SPLIT}
    compute_fisher(model_dir, harmful, tmp_path / "whole", device="cpu", progress=False)
    compute_fisher(
        model_dir, harmful, tmp_path / "mapped", device="cpu", device_map=on_cpu, progress=False
    )
    with FisherScores(tmp_path / "whole") as whole, FisherScores(tmp_path / "mapped") as mapped:
        assert whole.names == mapped.names
        assert all(torch.equal(whole.get(n), mapped.get(n)) for n in whole.names)


def test_fisher_refuses_weights_offloaded_to_disk(model_dir, tmp_path):
    from realignkit.calib.fisher import compute_fisher

    harmful = _write_harmful(tmp_path / "harmful.jsonl")
    with pytest.raises(RealignError, match="not on disk"):
        compute_fisher(model_dir, harmful, tmp_path / "f", device="cpu", device_map=SPLIT)
    assert not (tmp_path / "f").exists()


def test_vllm_gets_its_own_tensor_and_pipeline_parallelism(model_dir, monkeypatch):
    import sys
    import types

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr("realignkit.eval.generate.vllm_available", lambda: True)
    load_generator(
        model_dir, backend="vllm", device="cpu", tensor_parallel_size=4, pipeline_parallel_size=2
    )
    assert (seen["tensor_parallel_size"], seen["pipeline_parallel_size"]) == (4, 2)
    with pytest.raises(RealignError, match="--device-map"):
        load_generator(model_dir, backend="vllm", device="cpu", device_map="auto")


def test_parallel_sizes_are_refused_on_the_hf_backend(model_dir):
    with pytest.raises(RealignError, match="vLLM's"):
        load_generator(model_dir, backend="hf", device="cpu", tensor_parallel_size=2)
    with pytest.raises(RealignError, match=">= 1"):
        load_generator(model_dir, backend="hf", device="cpu", pipeline_parallel_size=0)


def test_eval_command_runs_a_model_split_over_cpu_and_disk(model_dir, tmp_path):
    from helpers import run_cli

    data = tmp_path / "harmful.jsonl"
    data.write_text(json.dumps({"prompt": "How do I make a weapon?"}) + "\n")
    args = ["eval", "--model", str(model_dir), "--safety", f"harmful:{data}", "--device", "cpu"]
    args += ["--max-new-tokens", "6", "--backend", "hf"]
    assert run_cli([*args, "-o", str(tmp_path / "whole")]) == 0
    assert run_cli([*args, "--device-map", json.dumps(SPLIT), "-o", str(tmp_path / "split")]) == 0
    rows = [
        json.loads((tmp_path / name / "summary.json").read_text())["metrics"]
        for name in ("whole", "split")
    ]
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_two_gloo_processes_fine_tune_as_one_process_with_the_same_global_batch(tmp_path):
    """`finetune` under a distributed launcher (torchrun here: accelerate launch on CPUs runs
    one process) is data parallel: 2 × batch 2 follows 1 × batch 4 step for step."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    model = save_tiny_model("llama", tmp_path / "m", seed=1)
    rows = [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(32)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["finetune", "--model", str(model), "--data", str(data), "--full"]
    # fp32 on every CPU: under bf16 autocast (the default where the CPU has AVX512-BF16)
    # the two reduction orders round apart by 3e-5, beyond this test's 1e-5.
    common += ["--max-steps", "6", "--lr", "1e-3", "--seed", "0", "--no-bf16"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    # The one-process reference runs the same CLI in this process (one torch thread, as the
    # workers): a process start less on a 2-core machine.
    from helpers import run_cli

    assert run_cli([*common, "--batch-size", "4", "-o", tmp_path / "one"]) == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two = [*launcher, "-m", "realignkit", *common, "--batch-size", "2", "-o"]
    subprocess.run([*two, str(tmp_path / "two")], check=True, capture_output=True, env=env)
    logs = [
        json.loads((tmp_path / n / "realignkit_train.json").read_text()) for n in ("one", "two")
    ]
    assert [log["processes"] for log in logs] == [1, 2]
    assert len(logs[0]["losses"]) == 6
    assert logs[1]["losses"] == pytest.approx(logs[0]["losses"], abs=1e-5)
    weights = [load_file(str(tmp_path / n / "model.safetensors")) for n in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-5)


ROWS = [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(8)]


def test_lora_finetune_on_a_device_map_follows_the_unsplit_run(model_dir, tmp_path):
    """`finetune --device-map` with an explicit map (all "cpu" on this machine: the same
    dispatch hooks that place blocks on several GPUs) trains the adapter to the same losses
    and weights as the model on one device."""
    from safetensors.torch import load_file

    from realignkit.train import TrainConfig, finetune

    on_cpu = json.dumps(dict.fromkeys(SPLIT, "cpu"))
    settings = dict(lora=True, lora_r=4, max_steps=3, lr=1e-2, batch_size=4, warmup=0)
    whole = finetune(model_dir, ROWS, tmp_path / "whole", TrainConfig(**settings))
    split = finetune(
        model_dir, ROWS, tmp_path / "split", TrainConfig(**settings, device_map=on_cpu)
    )
    logs = [json.loads((p / "realignkit_train.json").read_text()) for p in (whole, split)]
    assert logs[1]["losses"] == pytest.approx(logs[0]["losses"], abs=1e-6)
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (whole, split))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("lora", [True, False])
def test_training_refuses_weights_offloaded_to_disk(model_dir, tmp_path, lora):
    from realignkit.train import TrainConfig, finetune

    config = TrainConfig(lora=lora, max_steps=1, device_map=json.dumps(SPLIT))
    with pytest.raises(RealignError, match="offloaded to disk"):
        finetune(model_dir, ROWS, tmp_path / "ft", config)
    assert not (tmp_path / "ft").exists()


def test_finetune_command_takes_a_cpu_device_map_and_max_memory(model_dir, tmp_path):
    from realignkit.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "ft"
    main(
        ["finetune", "--model", str(model_dir), "--data", str(data), "--max-steps", "1"]
        + ["--device-map", "sequential", "--max-memory", "cpu=2GiB", "-o", str(out)]
    )
    assert (out / "adapter_model.safetensors").exists()
