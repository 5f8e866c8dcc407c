"""`realignkit plan` against what the commands measurably read, write and hold.

Each planned command is also run, in a fresh process (``tests/measure_cli.py``), which
reports its peak RSS and the bytes it read and wrote through system calls (``/proc/self/io``
counted from after the CLI's imports). Tolerances, the plan's stated accuracy:

* bytes read and written: within 1 % + 2 MiB of the measured counts (config and tokenizer
  files included; what is left is the index and card files and about 1.5 MiB of Python
  modules the command imports lazily, measured on the tiny models and on SmolLM2);
* peak host memory: an upper bound, at most 25 % + 64 MiB above the measured peak RSS.

Only the streaming stages are checked here so far: the model stages' formulas (``fisher``,
``eval``, ``finetune``, the calibration passes) are stated in ``realignkit/plan.py`` and wait
for their measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_model

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
    return smollm2_dir, unaligned, root


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
