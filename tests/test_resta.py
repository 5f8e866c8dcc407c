"""Safety vectors, RESTA and DARE end to end on tiny real checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, folder_digest, load_folder_tensors, run_cli
from tiny import ARCHITECTURES, build_tiny_model, perturbed_copy, save_tiny_model

from realignkit.ops.dare import dare, dare_keep_mask
from realignkit.ops.selection import is_selected


def make_world(root: Path, arch: str) -> dict[str, Path]:
    """aligned A, unaligned U (a perturbed A), fine-tuned F (another perturbed A)."""
    aligned = build_tiny_model(arch, seed=0)
    return {
        "A": save_tiny_model(arch, root / "A", model=aligned),
        "U": save_tiny_model(arch, root / "U", model=perturbed_copy(aligned, seed=1)),
        "F": save_tiny_model(arch, root / "F", model=perturbed_copy(aligned, seed=2)),
    }


def reference(world: dict[str, Path], gamma: float, selected) -> dict[str, torch.Tensor]:
    """θ_F + γ(θ_A − θ_U) in float64 on the selected tensors, in memory."""
    a, u, f = (load_folder_tensors(world[k]) for k in "AUF")
    out = {}
    for name, theta_f in f.items():
        if selected(name, theta_f):
            out[name] = theta_f.double() + gamma * (a[name].double() - u[name].double())
        else:
            out[name] = theta_f
    return out


def default_selection(name: str, t: torch.Tensor) -> bool:
    return is_selected(name, t.ndim, frozenset())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_resta_matches_float64_reference_and_loads(tmp_path: Path, arch: str) -> None:
    world = make_world(tmp_path, arch)
    before = {k: folder_digest(p) for k, p in world.items()}
    assert (
        run_cli(
            [
                "safety-vector",
                "--aligned",
                world["A"],
                "--unaligned",
                world["U"],
                "-o",
                tmp_path / "sv",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    code = run_cli(
        [
            "resta",
            "--finetuned",
            world["F"],
            "--safety-vector",
            tmp_path / "sv",
            "--gamma",
            "0.7",
            "--max-shard-size",
            "50KB",
            "-o",
            out,
        ]
    )
    assert code == 0
    got = load_folder_tensors(out)
    expected = reference(world, 0.7, default_selection)
    assert sorted(got) == sorted(expected)
    edited = 0
    for name, value in got.items():
        if default_selection(name, value):
            edited += 1
            torch.testing.assert_close(value.double(), expected[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, expected[name]), name  # untouched: bit for bit
    assert edited >= 2 * 4  # at least the attention/MLP weights of two blocks
    assert (out / "model.safetensors.index.json").exists()
    assert {k: folder_digest(p) for k, p in world.items()} == before  # inputs untouched

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 5
    card = (out / "README.md").read_text()
    assert "RESTA" in card and "| gamma | 0.7 |" in card and str(world["F"]) in card


def test_include_all_edits_embeddings_and_norms(tmp_path: Path) -> None:
    world = make_world(tmp_path, "llama")
    run_cli(
        ["safety-vector", "--aligned", world["A"], "--unaligned", world["U"], "-o", tmp_path / "sv"]
    )
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "resta",
                "--finetuned",
                world["F"],
                "--safety-vector",
                tmp_path / "sv",
                "--include",
                "all",
                "-o",
                out,
            ]
        )
        == 0
    )
    expected = reference(world, 0.5, lambda n, t: True)
    got = load_folder_tensors(out)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(got[name].double(), expected[name], rtol=0, atol=1e-6)


def test_dare_drops_the_right_fraction_and_rescales_exactly() -> None:
    delta = torch.randn(400, 500)
    p = 0.3
    dropped = dare(delta, p, seed=0, name="w")
    keep = dare_keep_mask(delta.shape, p, 0, "w")
    assert abs((~keep).float().mean().item() - p) < 0.01  # 200k Bernoulli draws: sd ≈ 0.001
    assert torch.equal(dropped[keep], delta[keep] / (1 - p))
    assert torch.all(dropped[~keep] == 0)
    assert abs(dropped.sum().item() - delta.sum().item()) < 0.05 * delta.abs().sum().item()
    # masks depend on (seed, name) only
    assert torch.equal(keep, dare_keep_mask(delta.shape, p, 0, "w"))
    assert not torch.equal(keep, dare_keep_mask(delta.shape, p, 0, "v"))
    assert not torch.equal(keep, dare_keep_mask(delta.shape, p, 1, "w"))
    assert torch.equal(dare(delta, 0.0, 0, "w"), delta)


def test_resta_with_dare_matches_reference_and_is_deterministic(tmp_path: Path) -> None:
    world = make_world(tmp_path, "mistral")
    run_cli(
        ["safety-vector", "--aligned", world["A"], "--unaligned", world["U"], "-o", tmp_path / "sv"]
    )
    outputs = []
    for i, (threads, workers) in enumerate([(1, 1), (2, 3), (1, 2)]):
        torch.set_num_threads(threads)
        out = tmp_path / f"out{i}"
        assert (
            run_cli(
                [
                    "resta",
                    "--finetuned",
                    world["F"],
                    "--base",
                    world["A"],
                    "--safety-vector",
                    tmp_path / "sv",
                    "--dare",
                    "0.3",
                    "--seed",
                    "5",
                    "--workers",
                    str(workers),
                    "-o",
                    out,
                ]
            )
            == 0
        )
        outputs.append(load_folder_tensors(out))
    torch.set_num_threads(1)
    for other in outputs[1:]:
        assert all(torch.equal(outputs[0][k], other[k]) for k in outputs[0])
    a, u, f = (load_folder_tensors(world[k]) for k in "AUF")
    for name, got in outputs[0].items():
        if not default_selection(name, got):
            assert torch.equal(got, f[name])
            continue
        keep = dare_keep_mask(got.shape, 0.3, 5, name)
        delta = f[name].double() - a[name].double()
        expected = (
            a[name].double()
            + torch.where(keep, delta / 0.7, 0)
            + 0.5 * (a[name].double() - u[name].double())
        )
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)


def test_adapter_input_equals_merged_model_and_lowrank_vector(tmp_path: Path) -> None:
    """RESTA on base + adapter gives the same model as RESTA on the merged fine-tune, and a
    safety vector from an unaligned *adapter* equals the dense one from the merged model."""
    from peft import LoraConfig, PeftModel, get_peft_model

    aligned = build_tiny_model("gpt2")
    a_dir = save_tiny_model("gpt2", tmp_path / "A", model=aligned)
    adapters = {}
    for role, seed in (("ft", 1), ("unaligned", 2)):
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            copy.deepcopy(aligned),
            LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
        )
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.1 * torch.randn_like(p))
        peft_model.save_pretrained(tmp_path / role)
        merged = PeftModel.from_pretrained(
            copy.deepcopy(aligned), tmp_path / role
        ).merge_and_unload()
        adapters[role] = save_tiny_model("gpt2", tmp_path / f"{role}-merged", model=merged)

    assert (
        run_cli(
            [
                "safety-vector",
                "--aligned",
                a_dir,
                "--unaligned-adapter",
                tmp_path / "unaligned",
                "-o",
                tmp_path / "sv-lr",
            ]
        )
        == 0
    )
    assert (
        run_cli(
            [
                "safety-vector",
                "--aligned",
                a_dir,
                "--unaligned",
                adapters["unaligned"],
                "-o",
                tmp_path / "sv-dense",
            ]
        )
        == 0
    )
    lowrank_files = load_folder_tensors(tmp_path / "sv-lr")
    assert any(k.endswith("::left") for k in lowrank_files)  # stored low-rank, not dense
    from realignkit.methods.safety_vector import SafetyVector

    with SafetyVector(tmp_path / "sv-lr") as lr, SafetyVector(tmp_path / "sv-dense") as dense:
        assert lr.is_lowrank
        for name in lr.names:
            torch.testing.assert_close(lr.get(name), dense.get(name), rtol=1e-4, atol=1e-6)

    assert (
        run_cli(
            [
                "resta",
                "--base",
                a_dir,
                "--adapter",
                tmp_path / "ft",
                "--safety-vector",
                tmp_path / "sv-lr",
                "-o",
                tmp_path / "o1",
            ]
        )
        == 0
    )
    assert (
        run_cli(
            [
                "resta",
                "--finetuned",
                adapters["ft"],
                "--safety-vector",
                tmp_path / "sv-dense",
                "-o",
                tmp_path / "o2",
            ]
        )
        == 0
    )
    one, two = load_folder_tensors(tmp_path / "o1"), load_folder_tensors(tmp_path / "o2")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-5, msg=name)


# -- bad input: one line, exit 2, no output, inputs untouched --------------------------------


@pytest.fixture()
def llama_world(tmp_path: Path) -> dict[str, Path]:
    world = make_world(tmp_path, "llama")
    assert (
        run_cli(
            [
                "safety-vector",
                "--aligned",
                world["A"],
                "--unaligned",
                world["U"],
                "-o",
                tmp_path / "sv",
            ]
        )
        == 0
    )
    world["SV"] = tmp_path / "sv"
    return world


def _expect_failure(
    capsys, tmp_path: Path, args: list, world: dict[str, Path], *needles: str
) -> None:
    before = {k: folder_digest(p) for k, p in world.items()}
    capsys.readouterr()
    code = run_cli(args)
    assert_one_line_error(capsys, code, *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert {k: folder_digest(p) for k, p in world.items()} == before


def test_bad_other_architecture(tmp_path, capsys, llama_world) -> None:
    qwen = save_tiny_model("qwen2", tmp_path / "qwen")
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            qwen,
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
    )


def test_bad_shape_names_the_tensor(tmp_path, capsys, llama_world) -> None:
    wide = save_tiny_model(
        "llama", tmp_path / "wide", model=build_tiny_model("llama", intermediate_size=48)
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            wide,
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "model.layers.0.mlp.down_proj.weight",  # the first mismatched tensor, by name
        "(32, 48)",
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "safety-vector",
            "--aligned",
            llama_world["A"],
            "--unaligned",
            wide,
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "mlp",
        "shape",
    )


def test_bad_missing_tensor(tmp_path, capsys, llama_world) -> None:
    model = build_tiny_model("llama")
    state = {
        k: v for k, v in model.state_dict().items() if k != "model.layers.1.self_attn.k_proj.weight"
    }
    folder = tmp_path / "partial"
    model.save_pretrained(folder, state_dict=state)
    _expect_failure(
        capsys,
        tmp_path,
        [
            "safety-vector",
            "--aligned",
            llama_world["A"],
            "--unaligned",
            folder,
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "model.layers.1.self_attn.k_proj.weight",
        "missing",
    )


def test_bad_nan_inf_input_and_result(tmp_path, capsys, llama_world) -> None:
    model = build_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[1, 2] = float("inf")
    inf_dir = save_tiny_model("llama", tmp_path / "inf", model=model)
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            inf_dir,
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "o_proj",
        "Inf",
    )
    # float16 output: γ·v overflows the stored dtype even though fp32 arithmetic does not
    half = save_tiny_model("llama", tmp_path / "half", dtype=torch.float16)
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            half,
            "--safety-vector",
            llama_world["SV"],
            "--gamma",
            "1e7",
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "in the result contains Inf",
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            half,
            "--safety-vector",
            llama_world["SV"],
            "--gamma",
            "1e39",
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "--gamma must be a finite float32 number",
    )


def test_bad_truncated_shard_and_wrong_path(tmp_path, capsys, llama_world) -> None:
    broken = tmp_path / "broken"
    save_tiny_model("llama", broken)
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            broken,
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        shard.name,
        "truncated",
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            tmp_path / "nowhere",
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "nowhere",
        "not found",
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            llama_world["F"],
            "--safety-vector",
            llama_world["A"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "not a safety vector folder",
    )


def test_bad_adapter_targets_and_dare_options(tmp_path, capsys, llama_world) -> None:
    from peft import LoraConfig, get_peft_model

    gpt2 = build_tiny_model("gpt2")
    get_peft_model(
        gpt2, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    ).save_pretrained(tmp_path / "lora")
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--base",
            llama_world["A"],
            "--adapter",
            tmp_path / "lora",
            "--safety-vector",
            llama_world["SV"],
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "c_attn.weight",
        "not in model",
    )
    _expect_failure(
        capsys,
        tmp_path,
        [
            "resta",
            "--finetuned",
            llama_world["F"],
            "--safety-vector",
            llama_world["SV"],
            "--dare",
            "0.3",
            "-o",
            tmp_path / "out",
        ],
        llama_world,
        "--dare needs --base",
    )
    for p in ("1.0", "-0.1"):
        _expect_failure(
            capsys,
            tmp_path,
            [
                "resta",
                "--finetuned",
                llama_world["F"],
                "--base",
                llama_world["A"],
                "--safety-vector",
                llama_world["SV"],
                "--dare",
                p,
                "-o",
                tmp_path / "out",
            ],
            llama_world,
            "[0, 1)",
        )


@pytest.mark.slow
def test_smollm2_real_model_resta(tmp_path: Path, smollm2_dir: Path) -> None:
    """A real pretrained checkpoint: stream a safety vector and RESTA, reload, generate."""
    from realignkit.checkpoint import CheckpointReader, CheckpointWriter

    def noisy_copy(dst: Path, seed: int) -> Path:
        gen = torch.Generator().manual_seed(seed)
        with (
            CheckpointReader(smollm2_dir) as src,
            CheckpointWriter(dst, max_shard_size="100MB") as w,
        ):
            for name in src.names:
                t = src.get(name)
                if "layers.3." in name and t.ndim == 2:
                    t = (t.float() + 1e-3 * torch.randn(t.shape, generator=gen)).to(t.dtype)
                w.add(name, t)
            w.copy_support_files(smollm2_dir)
        return dst

    unaligned, finetuned = noisy_copy(tmp_path / "U", 1), noisy_copy(tmp_path / "F", 2)
    assert (
        run_cli(
            [
                "safety-vector",
                "--aligned",
                smollm2_dir,
                "--unaligned",
                unaligned,
                "-o",
                tmp_path / "sv",
            ]
        )
        == 0
    )
    assert (
        run_cli(
            [
                "resta",
                "--finetuned",
                finetuned,
                "--base",
                smollm2_dir,
                "--dare",
                "0.3",
                "--safety-vector",
                tmp_path / "sv",
                "-o",
                tmp_path / "out",
            ]
        )
        == 0
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    text = tok.decode(
        model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1] :]
    )
    assert "Paris" in text
