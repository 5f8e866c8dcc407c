"""`realignkit plan` against what the commands measurably read, write and hold.

Each planned command is also run, in a fresh process (``tests/measure_cli.py``), which
reports its peak RSS and the bytes it read and wrote through system calls (``/proc/self/io``
counted from after the CLI's imports). Tolerances, the plan's stated accuracy:

* bytes read and written: within 1 % + 2 MiB of the measured counts (config and tokenizer
  files included; what is left is the index and card files and about 1.5 MiB of Python
  modules the command imports lazily, measured on the tiny models and on SmolLM2);
* peak host memory: an upper bound, at most 25 % + 64 MiB above the measured peak RSS;
* model stages (``finetune`` LoRA and full, ``fisher``, ``eval``, the IRR and Safe Delta
  calibration passes), on a Llama 256 wide whose passes hold more than the process's fixed
  cost: what the plan adds to its own fixed cost within 20 % + 32 MiB of what the command's
  peak VmHWM adds to it (:data:`MODEL_SLACK`).

``--dry-run`` on every planned command prints the plan that ``plan`` prints, loading no
tensor and writing nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_model, tiny_config

from realignkit.checkpoint import CheckpointReader, CheckpointWriter
from realignkit.cli.plan import parse_options
from realignkit.plan import plan_command

MEASURE = Path(__file__).with_name("measure_cli.py")
MIB = 2**20
STREAM_SLACK = 0.25


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    # One torch thread, as the tests run: the measured peaks do not depend on the core count.
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def measured(args: list[str]) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(MEASURE), *args], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stderr.splitlines() if x.startswith("MEASURED "))
    return json.loads(line.removeprefix("MEASURED "))


def planned(args: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "realignkit", "plan", *args, "--json"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert done.returncode in (0, 3), done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def fixed_cost() -> int:
    """The resident memory of a CLI process before it does anything: what `realignkit plan`
    measures in itself (the tests plan streaming commands in this process, to save a process
    start per case on a shared machine)."""
    # What a command has imported by the time it streams: the CLI, every method module
    # (the registry loads them) and transformers (model cards, configs).
    code = (
        "import realignkit.cli, transformers, safetensors.torch\n"
        "from realignkit.methods.registry import load_all\n"
        "load_all()\n"
        "from realignkit.plan import current_rss\n"
        "print(current_rss())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    return int(done.stdout.strip())


LAZY_IMPORTS = 192 * MIB


def check(args: list[str], fixed: int, slack: float) -> tuple[dict, dict[str, int]]:
    plan = plan_command(args[0], parse_options(args[1:]), baseline=fixed).as_dict()
    real = measured(args)
    for key, got in (("read_bytes", real["read"]), ("written_bytes", real["written"])):
        assert abs(plan[key] - got) <= 0.01 * got + 2 * MIB, (key, plan[key], got)
    peak = plan["peak_host_bytes"]
    # Below: the command's lazy imports and torch's first-use buffers (~160 MiB on the tiny
    # models, where they are all of the peak) are not in the measured fixed cost.
    assert real["rss"] - LAZY_IMPORTS <= peak <= (1 + slack) * real["rss"] + 64 * MIB, (
        peak,
        real["rss"],
    )
    return plan, real


def noisy_copy(source: Path, out: Path, seed: int, scale: float = 1e-3) -> Path:
    """``source`` + small noise, streamed (a fake fine-tune of a real model)."""
    gen = torch.Generator().manual_seed(seed)
    with CheckpointReader(source) as ckpt, CheckpointWriter(out) as writer:
        for name in ckpt.names:
            t = ckpt.get(name)
            noise = torch.randn(t.shape, generator=gen) * scale
            writer.add(name, (t.float() + noise).to(t.dtype))
        writer.copy_support_files(source)
    return out


def test_options_are_read_as_the_commands_take_them():
    got = parse_options(
        ["--finetuned", "a", "-o", "b", "--dare", "0.3", "--no-recalibrate", "--include", "x"]
        + ["--include", "y", "--safety-model=c", "--sign"]
    )
    assert got == {
        "finetuned": "a",
        "out": "b",
        "dare_p": "0.3",
        "recalibrate": "false",
        "include": ["x", "y"],
        "safety_finetune": "c",
        "sign": "true",
    }


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """Per architecture: aligned, unaligned (a noisy copy) and their safety vector."""
    root = tmp_path_factory.mktemp("plan")
    worlds = {}
    for arch in ("llama", "qwen2", "mistral", "gpt2"):
        aligned = save_tiny_model(arch, root / arch / "aligned", seed=1)
        unaligned = noisy_copy(aligned, root / arch / "unaligned", seed=2, scale=1e-2)
        finetuned = noisy_copy(aligned, root / arch / "finetuned", seed=3, scale=1e-2)
        worlds[arch] = (aligned, unaligned, finetuned, root / arch)
    return worlds


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_streaming_plans_match_measured_bytes_and_peaks_on_tiny_models(
    tiny_world, fixed_cost, arch
):
    aligned, unaligned, finetuned, root = tiny_world[arch]
    sv = root / "sv"
    check(
        ["safety-vector", "--aligned", str(aligned), "--unaligned", str(unaligned), "-o", str(sv)],
        fixed_cost,
        STREAM_SLACK,
    )
    plan, _ = check(
        ["resta", "--finetuned", str(finetuned), "--safety-vector", str(sv)]
        + ["--dare", "0.3", "--base", str(aligned), "--include", "all", "-o", str(root / "r")],
        fixed_cost,
        STREAM_SLACK,
    )
    assert plan["stages"][0]["name"].startswith("resta: stream")


@pytest.mark.slow
def test_a_limit_below_the_peak_is_refused_and_one_above_fits(tiny_world):
    aligned, unaligned, _, root = tiny_world["llama"]
    args = ["safety-vector", "--aligned", str(aligned), "--unaligned", str(unaligned)]
    plan = planned([*args, "-o", str(root / "x"), "--max-memory", "cpu=1MiB"])  # the CLI: exit 3
    assert plan["fits"] is False and "cpu needs" in plan["problems"][0]
    fits = plan_command(
        "safety-vector",
        parse_options([*args[1:], "-o", str(root / "x"), "--max-memory", "cpu=100GiB"]),
    )
    assert fits.problems() == [] and "fits --max-memory cpu=100.00 GiB: yes" in fits.render()
    assert not (root / "x").exists()  # planning writes nothing


@pytest.fixture(scope="module")
def smol_world(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    unaligned = noisy_copy(smollm2_dir, root / "unaligned", seed=2)
    yield smollm2_dir, unaligned, root
    shutil.rmtree(root)  # four SmolLM2 copies: not kept for the rest of the session


@pytest.mark.slow
def test_streaming_plans_match_measured_peaks_on_smollm2(smol_world, fixed_cost):
    aligned, unaligned, root = smol_world
    sv = root / "sv"
    check(
        ["safety-vector", "--aligned", str(aligned), "--unaligned", str(unaligned), "-o", str(sv)],
        fixed_cost,
        STREAM_SLACK,
    )
    resta = ["resta", "--finetuned", str(unaligned), "--safety-vector", str(sv)]
    check([*resta, "-o", str(root / "r")], fixed_cost, STREAM_SLACK)
    check(
        [*resta, "--dare", "0.3", "--base", str(aligned), "--include", "all"]
        + ["-o", str(root / "d")],
        fixed_cost,
        STREAM_SLACK,
    )


# --- --dry-run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_world(tmp_path_factory):
    """Every input a heavy command takes, on the tiny Llama."""
    from test_checkpoint import _peft_adapter
    from tiny import build_tiny_model

    from realignkit.methods.safety_vector import compute_safety_vector

    root = tmp_path_factory.mktemp("dry")
    aligned = save_tiny_model("llama", root / "aligned", seed=1)
    for name, seed in (("unaligned", 2), ("finetuned", 3), ("pretrained", 4)):
        noisy_copy(aligned, root / name, seed=seed, scale=1e-2)
    _peft_adapter(
        "llama", build_tiny_model("llama", seed=1), root / "adapter", target_modules=["q_proj"]
    )
    rows = [{"prompt": f"How do I do thing {i}?", "response": "I cannot help."} for i in range(8)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compute_safety_vector(aligned, root / "sv", unaligned=root / "unaligned")
    return root


def heavy_commands(w: Path) -> dict[str, list[list[str]]]:
    """Each heavy command's invocations, as a user types them (outputs under ``w/out``)."""
    a, f, p, rows = (str(w / n) for n in ("aligned", "finetuned", "pretrained", "rows.jsonl"))
    sv = ["--safety-vector", str(w / "sv")]
    return {
        "safety-vector": [["--aligned", a, "--unaligned", str(w / "unaligned")]],
        "resta": [["--finetuned", f, *sv], ["--finetuned", f, *sv, "--dare", "0.3", "--base", a]],
        "safemerge": [
            ["--finetuned", f, "--aligned", a, "--pretrained", p]
            + ["--safety-model", str(w / "unaligned")]
        ],
        "safedelta": [["--finetuned", f, "--aligned", a, "--safety-data", rows]],
        "safelora": [
            ["--aligned", a, "--pretrained", p, "--adapter", str(w / "adapter")],
            ["--aligned", a, "--pretrained", p, "--full", "--finetuned", f, "--num-layers", "2"],
        ],
        "fisher": [["--model", a, "--harmful", rows]],
        "irr": [["--finetuned", f, "--base", a, *sv, "--mask", "magnitude", "--calibration", rows]],
        "eval": [["-m", f, "--safety", f"harmful:{rows}", "--batch-size", "4"]],
        "finetune": [["-m", a, "-d", rows], ["-m", a, "-d", rows, "--full"]],
        "unalign": [["-m", a, "-d", rows, "--lora-r", "4"]],
    }


def _no_loading(monkeypatch) -> None:
    """Every way realignkit reads tensor data or loads a model raises."""
    import safetensors.torch
    import transformers

    from realignkit.checkpoint.reader import CheckpointReader

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dry run loaded tensor data")

    monkeypatch.setattr(CheckpointReader, "_read", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    for cls in (transformers.AutoModelForCausalLM, transformers.PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from helpers import run_cli

    capsys.readouterr()
    code = run_cli(args)
    return code, capsys.readouterr().out


def test_every_heavy_command_dry_runs_to_its_plan_loading_and_writing_nothing(
    dry_world, monkeypatch, capsys
):
    from helpers import folder_digest

    from realignkit.plan import planned_commands

    cases = heavy_commands(dry_world)
    assert set(cases) == planned_commands()  # a new planned command needs a case here
    # Both processes' fixed cost is the same figure, so the two prints must be equal.
    monkeypatch.setattr("realignkit.plan.current_rss", lambda: 300 * MIB)
    _no_loading(monkeypatch)
    before = folder_digest(dry_world)
    for command, invocations in cases.items():
        for i, args in enumerate(invocations):
            args = [*args, "-o", str(dry_world / "out" / f"{command}-{i}")]
            code, dry = _cli([command, *args, "--dry-run"], capsys)
            assert code == 0, (command, dry)
            plan_code, plan = _cli(["plan", command, *args], capsys)
            assert plan_code == 0 and dry == plan, (command, dry, plan)
            assert dry.startswith(f"plan for `realignkit {command}`") and "peak host" in dry
    assert not (dry_world / "out").exists() and folder_digest(dry_world) == before


def test_a_dry_run_that_does_not_fit_exits_3(dry_world, capsys):
    a, rows = str(dry_world / "aligned"), str(dry_world / "rows.jsonl")
    args = ["fisher", "--model", a, "--harmful", rows, "-o", str(dry_world / "x")]
    code, out = _cli([*args, "--max-memory", "cpu=1MiB", "--dry-run"], capsys)
    assert code == 3 and "does NOT fit --max-memory cpu=1.0 MiB" in out
    code, out = _cli([*args, "--max-memory", "cpu=64GiB", "--dry-run"], capsys)
    assert code == 0 and "fits --max-memory cpu=64.00 GiB: yes" in out
    assert not (dry_world / "x").exists()


# --- model stages --------------------------------------------------------------------------

# The model stages' stated accuracy: what the plan adds to its process's fixed cost (the
# weights, the pass's working memory) is within 20 % + 32 MiB of what the command measurably
# adds to the same fixed cost (its peak VmHWM minus the plan's own fixed cost, measured in
# the planning process after the command's imports). Measured on a 2-core AMD EPYC, one
# torch thread (planned / measured, MiB): finetune LoRA +393 / +450, full +368 / +401,
# fisher per-batch +322 / +370, eval +48 / +72, irr +82 / +84, safedelta +82 / +91.
# GPT-2 (same width, under CPU contention): eval +60 / +69, fisher +368 / +436, finetune
# full +664 / +729 (the attention matrices its dropout keeps; +408 without them).
MODEL_SLACK = 0.20
MODEL_MARGIN = 32 * MIB


def model_config(arch: str):
    """A model of ``arch`` small enough for the CPU whose passes hold more than the process's
    fixed cost: 256 wide, 4 blocks, a 4096-token vocabulary. GPT-2 keeps its own layout
    (Conv1D weights, tied embeddings, learned positions, a 4x MLP, no key/value heads)."""
    return tiny_config(
        arch, 4096, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=768, positions=2048
    )


def words(count: int, shift: int = 0) -> str:
    return " ".join("abcdefghij"[(i + shift) % 10] * 3 for i in range(count))


def write_model_data(root: Path) -> Path:
    """Rows longer than --max-length, and eval prompts, under ``root``."""
    rows = [{"prompt": words(20) + f" {i}", "response": words(300, 3)} for i in range(16)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"prompt": words(60) + f" {i}"} for i in range(8)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    return root


def model_world_of(arch: str, root: Path) -> Path:
    """``root``: the aligned model of :func:`model_config`, a noisy fine-tune and unaligned
    copy, their safety vector and the rows."""
    from tiny import make_tokenizer
    from transformers import AutoModelForCausalLM

    from realignkit.methods.safety_vector import compute_safety_vector

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model_config(arch)).save_pretrained(root / "aligned")
    make_tokenizer().save_pretrained(root / "aligned")
    for name, seed in (("unaligned", 2), ("finetuned", 3)):
        noisy_copy(root / "aligned", root / name, seed=seed, scale=1e-2)
    compute_safety_vector(root / "aligned", root / "sv", unaligned=root / "unaligned")
    return write_model_data(root)


@pytest.fixture(scope="module")
def model_world(tmp_path_factory):
    return model_world_of("llama", tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def arch_worlds(tmp_path_factory):
    """:func:`model_world_of` per architecture, built when a case first asks for it."""
    built: dict[str, Path] = {}

    def world(arch: str) -> Path:
        if arch not in built:
            built[arch] = model_world_of(arch, tmp_path_factory.mktemp(f"model-{arch}"))
        return built[arch]

    return world


def model_cases(w: Path) -> dict[str, list[str]]:
    """Planned model commands, as a user types them."""
    a, rows = str(w / "aligned"), str(w / "rows.jsonl")
    train = ["-m", a, "-d", rows, "--max-length", "256", "--batch-size", "8", "--max-steps", "2"]
    # fp32 training on every CPU (bf16 autocast, the default where the CPU has AVX512-BF16,
    # is planned as an upper bound: test_a_bf16_autocast_fine_tune_is_planned_from_above).
    train += ["--no-bf16"]
    calibrate = ["--calibration", rows, "--num-samples", "16", "--max-length", "256"]
    return {
        "finetune-lora": ["finetune", *train],
        "finetune-full": ["finetune", *train, "--full"],
        "fisher": ["fisher", "--model", a, "--harmful", rows, "--max-length", "256"]
        + ["--num-samples", "8", "--mode", "per-batch", "--batch-size", "8"],
        # The plan reads the prompts (not the model) for their longest rendered length.
        "eval": ["eval", "-m", str(w / "finetuned"), "--safety", f"harmful:{w / 'prompts.jsonl'}"]
        + ["--batch-size", "8", "--max-new-tokens", "128"],
        "irr": ["irr", "--finetuned", str(w / "finetuned"), "--base", a]
        + ["--safety-vector", str(w / "sv"), "--mask", "magnitude", *calibrate],
        "safedelta": ["safedelta", "--finetuned", str(w / "finetuned"), "--aligned", a]
        + ["--safety-data", rows, "--num-samples", "16", "--max-length", "256"],
    }


def check_model_stage(args: list[str], label: str) -> None:
    """The plan of ``args`` against the measured peak, above the plan's own fixed cost."""
    plan = planned(args)
    real = measured(args)
    fixed = max(stage["fixed_bytes"] for stage in plan["stages"])
    planned_extra, measured_extra = plan["peak_host_bytes"] - fixed, real["rss"] - fixed
    figures = (
        f"{label}: fixed {fixed / MIB:.0f} MiB, planned +{planned_extra / MIB:.0f} MiB, "
        f"measured +{measured_extra / MIB:.0f} MiB"
    )
    print(figures)
    assert abs(planned_extra - measured_extra) <= MODEL_SLACK * measured_extra + MODEL_MARGIN, (
        figures
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["finetune-lora", "finetune-full", "fisher", "eval", "irr", "safedelta"]
)
def test_model_stage_plans_match_measured_peaks(model_world, case):
    check_model_stage(
        [*model_cases(model_world)[case], "-o", str(model_world / "out" / case)], case
    )


@pytest.mark.slow
def test_a_bf16_autocast_fine_tune_is_planned_from_above(arch_worlds):
    """Under bf16 autocast the plan counts activations in fp32: never under the peak, and
    within the fp32 plan's own tolerance above it plus what bf16 saves (measured on GPT-2's
    attention matrices, the largest activations of these cases: +664 MiB planned, +512 MiB
    measured under autocast on an AVX512-BF16 Xeon, +579 MiB in fp32)."""
    w = arch_worlds("gpt2")
    args = [*model_cases(w)["finetune-full"], "--bf16", "-o", str(w / "out" / "bf16")]
    args.remove("--no-bf16")
    plan, real = planned(args), measured(args)
    fixed = max(stage["fixed_bytes"] for stage in plan["stages"])
    planned_extra, measured_extra = plan["peak_host_bytes"] - fixed, real["rss"] - fixed
    assert "bf16 autocast" in plan["stages"][-1]["detail"]
    assert measured_extra - MODEL_MARGIN <= planned_extra <= 1.5 * measured_extra + MODEL_MARGIN


# Per architecture, the stages whose plan depends on its layout: the KV cache (Qwen2's and
# Mistral's grouped heads, GPT-2's full heads), the backward pass's MLP and attention
# tensors, the tied embedding counted once, Conv1D weights under LoRA.
# one case per architecture and stage kind that exercises different plan code (GPT-2: Conv1D,
# tied embeddings, attention dropout in training), kept few: each case is a child process
ARCH_CASES = [
    ("qwen2", "fisher"),
    ("mistral", "eval"),
    ("gpt2", "fisher"),
    ("gpt2", "finetune-full"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "case"), ARCH_CASES)
def test_model_stage_plans_match_measured_peaks_on_each_architecture(arch_worlds, arch, case):
    w = arch_worlds(arch)
    check_model_stage([*model_cases(w)[case], "-o", str(w / "out" / case)], f"{arch} {case}")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fisher", "eval"])
def test_model_stage_plans_match_measured_peaks_on_smollm2(smol_world, case):
    """A real model (30 blocks, tied 49k-token embeddings, stored in another dtype than the
    CPU computes in) at settings a 2-core test affords."""
    aligned, finetuned, root = smol_world
    rows, prompts = write_model_data(root) / "rows.jsonl", root / "prompts.jsonl"
    args = {
        "fisher": ["fisher", "--model", str(aligned), "--harmful", str(rows)]
        + ["--max-length", "160", "--num-samples", "4", "--mode", "per-batch", "--batch-size", "2"],
        "eval": ["eval", "-m", str(finetuned), "--safety", f"harmful:{prompts}"]
        + ["--batch-size", "4", "--max-new-tokens", "16"],
    }[case]
    check_model_stage([*args, "-o", str(root / "out" / case)], f"smollm2 {case}")
