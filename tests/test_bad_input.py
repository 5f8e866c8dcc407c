"""Bad input never costs a user data: one table, every command, every defect.

Each row is a command line, the defect it carries, the exit code and a fragment of the one
``error:`` line expected. For every row the test also proves that no output folder (and no
temporary beside it) is left, and that every input file is byte for byte unchanged.

Rows cover: wrong path, no weights, offline hub id, architecture / shape / vocabulary mismatch,
a tensor missing from each input, NaN, truncated shard, corrupt header, pickle without the flag,
existing output, outputs that are / contain / lie inside / resolve to an input (with and
without --overwrite), bad option values, empty / malformed data and a bad row after the first,
bad adapters (module the model lacks, rank or target mismatch, PEFT's own refusal), all-NaN
Fisher scores, unknown benchmark or judge, a model that fails to load in eval, a full disk
(a real tmpfs where mount works, else a writer patched to raise ENOSPC), and SIGINT / SIGTERM
/ SIGKILL while a model is being written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import folder_digest, load_folder_tensors, run_cli
from safetensors.torch import load_file, save_file
from tiny import build_tiny_model, make_tokenizer, perturbed_copy, save_tiny_model

SRC = Path(__file__).resolve().parent.parent / "src"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
DISK_FULL = "no space left on the device"


# -- the world of inputs, built once --------------------------------------------------------
def _remove_tensor(folder: Path, name: str) -> None:
    """Delete one tensor from a (sharded) safetensors folder, index included."""
    for shard in folder.glob("*.safetensors"):
        tensors = load_file(shard)
        if name in tensors:
            del tensors[name]
            save_file(tensors, shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].pop(name, None)
        index.write_text(json.dumps(data))


def _poison(folder: Path, name: str) -> None:
    for shard in folder.glob("*.safetensors"):
        tensors = load_file(shard)
        if name in tensors:
            tensors[name][0, 0] = float("nan")
            save_file(tensors, shard, metadata={"format": "pt"})


def _shard_of(folder: Path, name: str) -> Path:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return folder / json.loads(index.read_text())["weight_map"][name]
    return folder / "model.safetensors"


def _adapter(base, folder: Path, **config_edits) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    peft_model = get_peft_model(
        build_tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    peft_model.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn_like(p))
    peft_model.save_pretrained(folder)
    if config_edits:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config_edits))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from realignkit.methods.safety_vector import compute_safety_vector

    root = tmp_path_factory.mktemp("inputs")
    w: dict[str, Path] = {"root": root}
    base = build_tiny_model("llama", seed=0)
    w["B"] = save_tiny_model("llama", root / "B", model=base)
    w["F"] = save_tiny_model("llama", root / "F", model=perturbed_copy(base, seed=1))
    w["U"] = save_tiny_model("llama", root / "U", model=perturbed_copy(base, seed=2))
    w["G"] = save_tiny_model("gpt2", root / "G")
    w["V"] = save_tiny_model("llama", root / "V", model=build_tiny_model("llama", vocab_size=352))
    w["S"] = save_tiny_model(
        "llama", root / "S", model=build_tiny_model("llama", intermediate_size=48)
    )
    w["SV"] = compute_safety_vector(w["B"], root / "SV", unaligned=w["U"], workers=1)
    w["L"] = _adapter(base, root / "L")
    w["SV_lowrank"] = compute_safety_vector(w["B"], root / "SV_lowrank", unaligned_adapter=w["L"])
    for name, source in (("F_missing", "F"), ("B_missing", "B"), ("U_missing", "U")):
        w[name] = Path(shutil.copytree(w[source], root / name))
        _remove_tensor(w[name], Q_PROJ)
    w["SV_missing"] = Path(shutil.copytree(w["SV"], root / "SV_missing"))
    _remove_tensor(w["SV_missing"], Q_PROJ)
    meta = json.loads((w["SV_missing"] / "safety_vector.json").read_text())
    del meta["tensors"][Q_PROJ]
    (w["SV_missing"] / "safety_vector.json").write_text(json.dumps(meta))
    w["F_nan"] = Path(shutil.copytree(w["F"], root / "F_nan"))
    _poison(w["F_nan"], Q_PROJ)
    w["F_trunc"] = Path(shutil.copytree(w["F"], root / "F_trunc"))
    shard = _shard_of(w["F_trunc"], "lm_head.weight")
    shard.write_bytes(shard.read_bytes()[:-100])
    w["F_header"] = Path(shutil.copytree(w["F"], root / "F_header"))
    shard = _shard_of(w["F_header"], Q_PROJ)
    raw = bytearray(shard.read_bytes())
    raw[8:24] = b"\xff" * 16
    shard.write_bytes(bytes(raw))
    w["F_pickle"] = root / "F_pickle"
    shutil.copytree(w["F"], w["F_pickle"], ignore=shutil.ignore_patterns("*.safetensors*"))
    torch.save(load_folder_tensors(w["F"]), w["F_pickle"] / "pytorch_model.bin")
    w["no_weights"] = root / "no_weights"
    w["no_weights"].mkdir()
    shutil.copy(w["F"] / "config.json", w["no_weights"] / "config.json")
    make_tokenizer().save_pretrained(w["no_weights"])
    # Adapters that disagree with the model or with themselves.
    w["L_extra"] = Path(shutil.copytree(w["L"], root / "L_extra"))
    tensors = load_file(w["L_extra"] / "adapter_model.safetensors")
    for key in list(tensors):
        if ".layers.0." in key:
            tensors[key.replace(".layers.0.", ".layers.7.")] = tensors[key].clone()
    save_file(tensors, w["L_extra"] / "adapter_model.safetensors")
    w["L_rank"] = _adapter(base, root / "L_rank", r=8)
    w["L_targets"] = _adapter(base, root / "L_targets", target_modules=["k_proj"])
    w["L_peft"] = _adapter(base, root / "L_peft", task_type="NOT_A_TASK")
    # Data files.
    rows = [{"prompt": f"How do I do thing {i}?", "response": "I cannot help."} for i in range(8)]
    w["data"] = root / "harmful.jsonl"
    w["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    w["bad_row"] = root / "bad_row.jsonl"
    bad = rows[:2] + [{"question": "no prompt column here", "response": "x"}] + rows[2:]
    w["bad_row"].write_text("".join(json.dumps(r) + "\n" for r in bad))
    w["malformed"] = root / "malformed.jsonl"
    w["malformed"].write_text(json.dumps(rows[0]) + "\n{not json\n")
    w["empty"] = root / "empty.jsonl"
    w["empty"].write_text("")
    # Outputs that overlap inputs, and outputs that exist.
    w["par"] = root / "par"
    w["par"].mkdir()
    shutil.copytree(w["F"], w["par"] / "F")
    shutil.copytree(w["SV"], w["par"] / "SV")
    (w["par"] / "notes.txt").write_text("x\n")
    w["link_F"] = root / "link_F"
    w["link_F"].symlink_to(w["F"], target_is_directory=True)
    w["link_SV"] = root / "link_SV"
    w["link_SV"].symlink_to(w["SV"], target_is_directory=True)
    w["done"] = Path(shutil.copytree(w["SV"], root / "done"))  # a realignkit output
    w["user_dir"] = root / "user_dir"
    w["user_dir"].mkdir()
    (w["user_dir"] / "thesis.tex").write_text("years of work\n")
    return w


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory: pytest.TempPathFactory):
    """A 16 KiB tmpfs (as root), or None where mounting is not allowed."""
    folder = tmp_path_factory.mktemp("full")
    mounted = False
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        probe = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], capture_output=True
        )
        mounted = probe.returncode == 0
    yield folder if mounted else None
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


# -- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` with ``{name}`` for world paths and ``{out}`` for the output."""

    id: str
    argv: str
    code: int
    fragment: str
    disk_full: bool = False  # write to a full disk
    kill: signal.Signals | None = None  # send this signal mid-write (a subprocess)
    env: tuple[tuple[str, str], ...] = ()
    # eval keeps finished generations in OUT/cache so that a rerun resumes: by design the only
    # output allowed to remain (the inputs are still checked unchanged).
    resumable_report: bool = False


RESTA = "resta --safety-vector {SV} --finetuned {F} -o {out}"
SV_CMD = "safety-vector --aligned {B} --unaligned {U} -o {out}"
IRR = "irr --safety-vector {SV} --finetuned {F} --base {B} --mask magnitude -o {out}"
IRR_NO_RECAL = IRR + " --no-recalibrate"
SAFELORA = "safelora --aligned {B} --pretrained {U} -o {out}"
FISHER = "fisher --model {B} --harmful {data} --num-samples 4 --max-length 32 -o {out}"
TRAIN = "finetune --model {B} --data {data} --max-steps 1 --batch-size 2 --max-length 32 -o {out}"
EVAL = "eval --model {F} --safety harmful:{data} --limit 2 --max-new-tokens 2 -o {out}"

CASES = [
    # Inputs that are not there or not models.
    Case("resta/wrong-path", RESTA.replace("{F}", "{root}/nope"), 2, "not found"),
    Case("resta/no-weights", RESTA.replace("{F}", "{no_weights}"), 2, "no model weights found"),
    Case(
        "resta/offline-hub-id",
        RESTA.replace("{F}", "nobody/no-such-model"),
        2,
        "could not be fetched from the Hugging Face Hub",
        env=(("HF_HUB_OFFLINE", "1"),),
    ),
    Case(
        "resta/safety-vector-not-one",
        "resta --safety-vector {F} --finetuned {F} -o {out}",
        2,
        "not a safety vector folder",
    ),
    # Models that do not fit together.
    Case("resta/architecture", RESTA.replace("{F}", "{G}"), 2, "made for a LlamaForCausalLM"),
    Case("resta/shape", RESTA.replace("{F}", "{S}"), 2, "has shape"),
    Case(
        "resta/vocabulary",
        RESTA.replace("{SV}", "{SV_lowrank}").replace("{F}", "{V}"),
        2,
        "vocabulary of 320 tokens",
    ),
    Case("safety-vector/architecture", SV_CMD.replace("{U}", "{G}"), 2, "share one architecture"),
    # A tensor missing from each input.
    Case(
        "resta/missing-in-finetuned",
        RESTA.replace("{F}", "{F_missing}"),
        2,
        f"'{Q_PROJ}' of the safety vector is missing from the fine-tuned model",
    ),
    Case(
        "resta/missing-in-safety-vector",
        RESTA.replace("{SV}", "{SV_missing}"),
        2,
        f"'{Q_PROJ}' is missing from the safety vector",
    ),
    Case(
        "resta/missing-in-base",
        RESTA + " --base {B_missing} --dare 0.3",
        2,
        f"'{Q_PROJ}' of the fine-tuned model is missing from the base model",
    ),
    Case(
        "safety-vector/missing-in-unaligned",
        SV_CMD.replace("{U}", "{U_missing}"),
        2,
        f"'{Q_PROJ}' of the aligned model is missing from the unaligned model",
    ),
    Case(
        "safety-vector/missing-in-aligned",
        SV_CMD.replace("{B}", "{B_missing}"),
        2,
        f"'{Q_PROJ}' of the unaligned model is missing from the aligned model",
    ),
    Case(
        "irr/missing-in-finetuned",
        IRR_NO_RECAL.replace("{F}", "{F_missing}"),
        2,
        f"'{Q_PROJ}' of the base model is missing from the fine-tuned model",
    ),
    Case(
        "irr/missing-in-base",
        IRR_NO_RECAL.replace("{B}", "{B_missing}"),
        2,
        f"'{Q_PROJ}' of the fine-tuned model is missing from the base model",
    ),
    Case(
        "safelora/missing-in-finetuned",
        SAFELORA + " --full --finetuned {F_missing}",
        2,
        f"'{Q_PROJ}' of the aligned model is missing from the fine-tuned model",
    ),
    Case(
        "safelora/missing-in-pretrained",
        SAFELORA.replace("{U}", "{U_missing}") + " --full --finetuned {F}",
        2,
        f"'{Q_PROJ}' of the aligned model is missing from the pre-trained model",
    ),
    # Damaged files.
    Case("resta/nan", RESTA.replace("{F}", "{F_nan}"), 2, "contains NaN"),
    Case("resta/truncated-shard", RESTA.replace("{F}", "{F_trunc}"), 2, "is truncated"),
    Case("resta/corrupt-header", RESTA.replace("{F}", "{F_header}"), 2, "safetensors"),
    Case("resta/pickle-without-flag", RESTA.replace("{F}", "{F_pickle}"), 2, "--allow-pickle"),
    Case("eval/truncated-shard", EVAL.replace("{F}", "{F_trunc}"), 2, "is truncated"),
    Case(
        "eval/model-fails-to-load", EVAL.replace("{F}", "{no_weights}"), 2, "no model weights found"
    ),
    Case("fisher/all-nan-scores", FISHER.replace("{B}", "{F_nan}"), 2, "contains NaN"),
    # Outputs that would destroy an input, and outputs that exist.
    Case(
        "resta/out-contains-inputs",
        "resta --safety-vector {par}/SV --finetuned {par}/F -o {par} --overwrite",
        2,
        "contains the input",
    ),
    Case(
        "resta/out-is-symlink-to-finetuned",
        RESTA.replace("{out}", "{link_F}") + " --overwrite",
        2,
        "is the input",
    ),
    Case(
        "resta/out-is-symlink-to-safety-vector",
        RESTA.replace("{out}", "{link_SV}") + " --overwrite",
        2,
        "is the input",
    ),
    Case("resta/out-is-input", RESTA.replace("{out}", "{F}"), 2, "is the input"),
    Case(
        "resta/out-inside-input",
        RESTA.replace("{out}", "{F}/sub") + " --overwrite",
        2,
        "lies inside the input",
    ),
    Case(
        "safety-vector/out-is-aligned",
        SV_CMD.replace("{out}", "{B}") + " --overwrite",
        2,
        "is the input",
    ),
    Case(
        "finetune/out-is-model", TRAIN.replace("{out}", "{B}") + " --overwrite", 2, "is the input"
    ),
    Case(
        "fisher/out-is-data", FISHER.replace("{out}", "{data}") + " --overwrite", 2, "is the input"
    ),
    Case("eval/out-inside-model", EVAL.replace("{out}", "{F}/report"), 2, "lies inside the input"),
    Case("judge/out-is-input", "judge -i {data} -o {data}", 2, "is the input"),
    Case("resta/existing-output", RESTA.replace("{out}", "{done}"), 2, "pass --overwrite"),
    Case(
        "resta/overwrite-user-folder",
        RESTA.replace("{out}", "{user_dir}") + " --overwrite",
        2,
        "not written by realignkit",
    ),
    Case(
        "safelora/existing-output",
        SAFELORA.replace("{out}", "{done}") + " --adapter {L}",
        2,
        "pass --overwrite",
    ),
    # Bad option values.
    Case("resta/gamma-nan", RESTA + " --gamma nan", 2, "--gamma"),
    Case("resta/dare-range", RESTA + " --base {B} --dare 1.5", 2, "--dare must be in [0, 1)"),
    Case("resta/not-a-number", RESTA + " --gamma lots", 2, "valid number"),
    Case("safety-vector/dtype", SV_CMD + " --dtype fp7", 2, "unknown dtype"),
    Case("safety-vector/both-unaligned", SV_CMD + " --unaligned-adapter {L}", 2, "exactly one"),
    Case("irr/rho-range", IRR_NO_RECAL + " --rho 2", 2, "rho"),
    Case("fisher/mode", FISHER + " --mode sometimes", 2, "unknown --mode"),
    Case("finetune/max-steps", TRAIN.replace("--max-steps 1", "--max-steps 0"), 2, "--max-steps"),
    # Bad data.
    Case(
        "fisher/bad-row-after-first",
        FISHER.replace("{data}", "{bad_row}"),
        2,
        "bad_row.jsonl, line 3: no value in column 'prompt'",
    ),
    Case(
        "irr/bad-calibration-row",
        IRR + " --calibration {bad_row}",
        2,
        "bad_row.jsonl, line 3: no value in column 'prompt'",
    ),
    Case(
        "finetune/bad-row-after-first",
        TRAIN.replace("{data}", "{bad_row}"),
        2,
        "bad_row.jsonl, line 3: no value in column 'prompt'",
    ),
    Case(
        "fisher/malformed-jsonl",
        FISHER.replace("{data}", "{malformed}"),
        2,
        "malformed.jsonl, line 2: not valid JSON",
    ),
    Case("fisher/empty-data", FISHER.replace("{data}", "{empty}"), 2, "is empty"),
    Case("eval/bad-row-after-first", EVAL.replace("{data}", "{bad_row}"), 2, "line 3"),
    # Adapters.
    Case(
        "resta/adapter-module-missing",
        "resta --safety-vector {SV} --base {B} --adapter {L_extra} -o {out}",
        2,
        "which is not in model",
    ),
    Case(
        "eval/adapter-module-missing",
        "eval --base {B} --adapter {L_extra} "
        "--safety harmful:{data} --limit 2 --max-new-tokens 2 -o {out}",
        2,
        "which is not in model",
    ),
    Case(
        "resta/adapter-rank-mismatch",
        "resta --safety-vector {SV} --base {B} --adapter {L_rank} -o {out}",
        2,
        "says r=8",
    ),
    Case(
        "eval/adapter-targets-mismatch",
        "eval --base {B} --adapter {L_targets} "
        "--safety harmful:{data} --limit 2 --max-new-tokens 2 -o {out}",
        2,
        "disagree",
    ),
    Case(
        "eval/peft-rejects-adapter",
        "eval --base {B} --adapter {L_peft} "
        "--safety harmful:{data} --limit 2 --max-new-tokens 2 -o {out}",
        2,
        "PEFT cannot apply adapter",
    ),
    # Evaluation settings.
    Case(
        "eval/unknown-benchmark", "eval --model {F} --safety nosuchbench -o {out}", 2, "nosuchbench"
    ),
    Case("eval/unknown-judge", EVAL + " --judge oracle", 2, "oracle"),
    # A full disk, in every writing command.
    Case("resta/disk-full", RESTA, 2, DISK_FULL, disk_full=True),
    Case("safety-vector/disk-full", SV_CMD, 2, DISK_FULL, disk_full=True),
    Case("irr/disk-full", IRR_NO_RECAL, 2, DISK_FULL, disk_full=True),
    Case("safelora/disk-full", SAFELORA + " --adapter {L}", 2, DISK_FULL, disk_full=True),
    Case("fisher/disk-full", FISHER, 2, DISK_FULL, disk_full=True),
    Case("finetune/disk-full", TRAIN, 2, DISK_FULL, disk_full=True),
    Case("eval/disk-full", EVAL, 2, DISK_FULL, disk_full=True, resumable_report=True),
    # Interrupted while the model is being written.
    Case("resta/sigint", RESTA, 130, "interrupted: nothing was written", kill=signal.SIGINT),
    Case("resta/sigterm", RESTA, 130, "interrupted: nothing was written", kill=signal.SIGTERM),
    Case("resta/sigkill", RESTA, -9, "", kill=signal.SIGKILL),
]

# Runs the CLI in a child whose writer is slowed down, so a signal lands mid-write. Ctrl-C is
# restored first: a suite started as a background job of a non-interactive shell (`cmd &`)
# inherits SIGINT ignored, and an ignored SIGINT would let the child finish (exit 0).
SLOW_WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from realignkit.checkpoint import writer
add = writer.CheckpointWriter.add
def slow_add(self, name, tensor):
    add(self, name, tensor)
    time.sleep(0.15)
writer.CheckpointWriter.add = slow_add
from realignkit.cli import main
main(sys.argv[1:])
"""


def _argv(case: Case, world: dict[str, Path], out: Path) -> list[str]:
    names = {k: str(v) for k, v in world.items()} | {"out": str(out)}
    return case.argv.format(**names).split()


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.is_dir() else []


def _run_killed(argv: list[str], out: Path, sig: signal.Signals) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, *argv, "--workers", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(any(t.glob("*.safetensors")) for t in _temporaries(out)):  # writing has begun
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the child never started writing"
        time.sleep(0.02)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_leaves_no_output_and_inputs_unchanged(
    case: Case,
    world: dict[str, Path],
    full_disk: Path | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    if case.disk_full:
        if full_disk is not None:
            out = full_disk / "out"
        elif case.resumable_report:
            pytest.skip("eval's report writes need a real full disk (tmpfs)")
        else:  # no tmpfs here: the writer's first file fails as a full disk would
            from realignkit.checkpoint.writer import CheckpointWriter

            def no_space(*args: object, **kwargs: object) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(CheckpointWriter, "write_json", no_space)
            monkeypatch.setattr(CheckpointWriter, "add", no_space)
    argv = _argv(case, world, out)
    before = folder_digest(world["root"])
    existed = out.exists()

    if case.kill is not None:
        code, err = _run_killed(argv, out, case.kill)
    else:
        code = run_cli(argv)
        err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith(("error:", "interr"))]

    assert code == case.code, err
    assert "Traceback" not in err, err
    if case.fragment:
        assert len(lines) == 1, err
        assert case.fragment in lines[0], lines[0]
    assert folder_digest(world["root"]) == before, "an input changed"
    if not existed and not case.resumable_report:
        assert not out.exists(), f"output {out} was left behind"
    if case.kill is signal.SIGKILL:
        # Nothing can clean up after SIGKILL; the next run removes the stale temporary.
        assert _temporaries(out), "expected the killed run's temporary"
        assert run_cli(_argv(case, world, out) + ["--workers", "1"]) == 0
        assert not _temporaries(out) and (out / "realignkit.json").is_file()
    else:
        left = {str(t): sorted(p.name for p in t.iterdir()) for t in _temporaries(out)}
        assert not left, f"temporary folders left beside the output: {left}\n{err}"


# -- what used to fail and now works -------------------------------------------------------
def test_overwrite_replaces_a_realignkit_output(world, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = _argv(Case("", RESTA, 0, ""), world, out)
    assert run_cli(argv) == 0
    first = folder_digest(out)
    assert run_cli([*argv, "--gamma", "0.9", "--overwrite"]) == 0
    assert folder_digest(out) != first and (out / "realignkit.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_irr_allow_pickle_recalibrates(world, tmp_path, capsys) -> None:
    """The running-model loader receives --allow-pickle (it used to ask for safetensors)."""
    argv = _argv(Case("", IRR, 0, ""), world, tmp_path / "out")
    argv = [a.replace(str(world["F"]), str(world["F_pickle"])) for a in argv]
    argv += ["--calibration", str(world["data"]), "--allow-pickle", "--min-calibration-tokens", "1"]
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "realignkit.json").is_file()


DTYPE_COMMANDS = {
    "irr": "irr --safety-vector {SV} --finetuned {F} --base {B} --mask magnitude "
    "--calibration {data} --min-calibration-tokens 1 --dtype fp32",
    "resta+dare": "resta --safety-vector {SV} --finetuned {F} --base {B} --dare 0.3",
    "safelora-full": "safelora --full --finetuned {F} --aligned {B} --pretrained {U}",
}


@pytest.mark.parametrize("command", DTYPE_COMMANDS)
@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float32])
def test_output_keeps_the_finetuned_dtype(world, tmp_path, capsys, base_dtype, command) -> None:
    """θ_F in fp16, θ_B in bf16 or fp32: every written tensor is fp16, and so is the config
    (IRR used to write fp32 edits under a float16 config)."""
    from_base = build_tiny_model("llama", seed=0)
    names = {k: str(v) for k, v in world.items()}
    names["B"] = str(save_tiny_model("llama", tmp_path / "B", model=from_base, dtype=base_dtype))
    names["F"] = str(
        save_tiny_model(
            "llama", tmp_path / "F", model=perturbed_copy(from_base, seed=1), dtype=torch.float16
        )
    )
    out = tmp_path / "out"
    argv = DTYPE_COMMANDS[command].format(**names).split() + ["-o", str(out)]
    if command == "safelora-full":
        argv += ["--threshold", "1.0"]  # project every layer: every tensor goes through the edit
    assert run_cli(argv) == 0, capsys.readouterr().err
    written = load_folder_tensors(out)
    assert written and {t.dtype for t in written.values()} == {torch.float16}
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"


def test_unexpected_error_is_exit_1_with_traceback_only_under_debug(
    world, tmp_path, capsys, monkeypatch
) -> None:
    import realignkit.methods.resta as resta_module

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(resta_module, "resta_tensor", broken)
    argv = _argv(Case("", RESTA, 0, ""), world, tmp_path / "out")
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: unexpected ZeroDivisionError: a bug" in err
    assert run_cli([*argv, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
