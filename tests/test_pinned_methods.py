"""Every method's output tensors, pinned before the methods moved onto one executor (issue 14).

The digests were computed with the hand-written pipelines of commit 3441915 (IRR, Safe LoRA on
adapters, the safety vector, the Fisher scores) and the executor of that commit (RESTA, DARE,
Safe LoRA on full fine-tunes, Safe Delta, SafeMERGE); moving a method onto the executor must
leave every tensor (name, dtype, shape, bytes) as it was. Shard layouts may change: only the
tensors are hashed. Bits are pinned per kind of CPU, closeness on every CPU (see pins.py).

``python tests/test_pinned_methods.py`` prints this CPU's digests (to add under its kind);
``--save-fingerprints`` rewrites the fingerprints: only when a change of results is intended.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import run_cli  # noqa: E402
from pins import (  # noqa: E402
    cpu_kind,
    far_from_pins,
    fingerprint,
    load_fingerprints,
    one_thread,
    save_fingerprints,
    tensors_digest,
)
from tiny import build_tiny_model, perturbed_copy, save_tiny_model  # noqa: E402

# Recorded on a 2-core AMD EPYC (Zen 3, AVX2), 2026-12-02.
PINNED_AVX2_AMD: dict[str, str] = {
    "llama-sv": "23cfc6409c37562ba73ee245fe771b0dab98652dde15409a05f040066e60cf58",
    "llama-sv-lowrank": "2476c08679c6f68115ecea5f29c0ea316cd5079f32b9916123a23f98554a98c4",
    "llama-fisher": "ed0994718155adde312b81cb6500fff3e7c91f558f6ab41b2519c0c7777fe8e1",
    "llama-resta": "b55242bfa771d0a7cbda6fa6f67d5c7ce1c65974ce161d4a5db3e890dff25c2e",
    "llama-resta-dare": "f0dc0890110fa73daa95f8b356588a573362f823884ec6f1535d83d037ad2328",
    "llama-irr": "265277fee27a3aa7b02b4d062fb3da61ae669aba9f764a714376270955d1d8ba",
    "llama-irr-official": "83240e7a2bf62f53bd1a5433320d10185a29addfd0c79ab9b9add680565f141e",
    "llama-irr-plain-global": "a952b4305753963f10018a091e61b9820e753fdce77338abaf712dfd0a91ff87",
    "llama-irr-adapter-lowrank": "8aea2789d267610cf402a29de46a637875ddded52b487684bd0572bf0e13259d",
    "llama-safelora-full": "ea00bd8d18250b5c11655856327f4f96a15357e144035e61a95d84aa320e3dc5",
    "llama-safelora-lora": "9c0e9acac3666ffc0cabb25890f2608e511387dcc145b371bb380bf3e697e3b2",
    "llama-safelora-lora-t05": "2a1c4703c992f1a0774d34ffb334c15ceb727e2d3456327f04c93e818609b838",
    "llama-safedelta": "a10b6dc0cdd7c7cd295f892b14f7ef6cfd60cb70d6b6df08fce3d39e90fa01cb",
    "llama-safemerge": "1681c7293f853a91d14d81d9406b5f0030db8ed9e33623bc9e1573845d0e50c5",
    "gpt2-sv": "5a411d52c9fb32335c1d9c2247960267af2180b31aa29aa6977f887f1a6418c9",
    "gpt2-sv-lowrank": "51fac9d62648dedb59d8b1b7855a0fe2e9ec29d4e2525df7893a7608c4e65f1d",
    "gpt2-fisher": "c93f7094730523dbd937c566e5bbffd1db87ea0c34dd151f0dc46e27a33e68bf",
    "gpt2-resta": "c56d318e785fbdbf34e9f2d347ca1aced49c4e65dbf46b6070c959a970661445",
    "gpt2-resta-dare": "6a49183f266d9cef6a7c4fa7abaedb4726cbe9e72e6aca07880e6f2784ca3d81",
    "gpt2-irr": "6d299d6bba612a0f78abc16bb867d9b23e5867a0a716c5b897edf0315413a17e",
    "gpt2-irr-official": "ea420aa592f7a084af103d405b784770fb19c837196d5ea1b9670c7c4c78740d",
    "gpt2-irr-plain-global": "0750ab9ccc95f7b7372780768542553939bd0fab71bb57d27e71645e6c9b1d65",
    "gpt2-irr-adapter-lowrank": "3be15dd6798f265194fd1be5a71cf9f8f240e552d8be67bbcad71bdc9ba4f225",
    "gpt2-safelora-full": "1b0681000ea4fafe97ce2ab67f08126abd70ad6f903b10d6fd1b1603d7bdf90f",
    "gpt2-safelora-lora": "3e6f2fcd22038558005dd9e639ae97daf6f34e4f725e394ca4cd63fa552d198b",
    "gpt2-safelora-lora-t05": "6662b49b777e3a80f97305c0c1e036e31a650701f082ba26e80fe5776e0b0429",
    "gpt2-safedelta": "6ba6fe2809601705e4b33e1d0dc0a775f85fdbd84d1f4dd728e13cf91a94cfed",
    "gpt2-safemerge": "4b9e8d4afb8756f41466eac1280772ab3b7259fe4879305bc3a2d2c1fd8e11dd",
}

# The same outputs on a 2-core Intel Xeon (AVX-512, AVX512-BF16, AMX), 2026-12-04.
PINNED_AVX512_INTEL: dict[str, str] = {
    "llama-sv": "23cfc6409c37562ba73ee245fe771b0dab98652dde15409a05f040066e60cf58",
    "llama-sv-lowrank": "2476c08679c6f68115ecea5f29c0ea316cd5079f32b9916123a23f98554a98c4",
    "llama-fisher": "80281cc9b4830ac2a9c053e6eabfc701925f9ea7420e561af8eb6b6fec0220a4",
    "llama-resta": "b55242bfa771d0a7cbda6fa6f67d5c7ce1c65974ce161d4a5db3e890dff25c2e",
    "llama-resta-dare": "f0dc0890110fa73daa95f8b356588a573362f823884ec6f1535d83d037ad2328",
    "llama-irr": "c0a2180407c92a5ca632205d319d63c4e3c300a7fbe96c5a8527f07e84c32727",
    "llama-irr-official": "6e1dffc7ece50a15bb3350ec0b4cee0d982d0bcf21590809146a465363a7c180",
    "llama-irr-plain-global": "a952b4305753963f10018a091e61b9820e753fdce77338abaf712dfd0a91ff87",
    "llama-irr-adapter-lowrank": "c8a7603ecb9de39c9ac9eeabac4b73f13cc4f0faed8950c9748bce5b2b754374",
    "llama-safelora-full": "ea00bd8d18250b5c11655856327f4f96a15357e144035e61a95d84aa320e3dc5",
    "llama-safelora-lora": "378ec8287f51afbcc19d68f6641d0857ea58604ff479954ec7dbbeeda9e43fe2",
    "llama-safelora-lora-t05": "2a1c4703c992f1a0774d34ffb334c15ceb727e2d3456327f04c93e818609b838",
    "llama-safedelta": "eaa83d1e22ac03b4a1d8f698dc531e2f901ab7a0d7f2ba129437072f2642b842",
    "llama-safemerge": "1681c7293f853a91d14d81d9406b5f0030db8ed9e33623bc9e1573845d0e50c5",
    "gpt2-sv": "5a411d52c9fb32335c1d9c2247960267af2180b31aa29aa6977f887f1a6418c9",
    "gpt2-sv-lowrank": "51fac9d62648dedb59d8b1b7855a0fe2e9ec29d4e2525df7893a7608c4e65f1d",
    "gpt2-fisher": "9334537f611a164d727d79411774ea63c9aee5ca5bb0fb8597945506b23aee07",
    "gpt2-resta": "c56d318e785fbdbf34e9f2d347ca1aced49c4e65dbf46b6070c959a970661445",
    "gpt2-resta-dare": "6a49183f266d9cef6a7c4fa7abaedb4726cbe9e72e6aca07880e6f2784ca3d81",
    "gpt2-irr": "b9749aff55048cb925784fc03fe18aa5b46f568e4297b90e05cd67984bbed364",
    "gpt2-irr-official": "fc3901bf56758f631b207a782b19008518f80e602b5ff96ffc49dc5c72d2ddd1",
    "gpt2-irr-plain-global": "0750ab9ccc95f7b7372780768542553939bd0fab71bb57d27e71645e6c9b1d65",
    "gpt2-irr-adapter-lowrank": "032801c0466128ad7743211815e928b6be3125d525d27c9f3473519a8db47e80",
    "gpt2-safelora-full": "1b0681000ea4fafe97ce2ab67f08126abd70ad6f903b10d6fd1b1603d7bdf90f",
    "gpt2-safelora-lora": "6f28f34079cbcb483a1f1c89a972a605e4fadb8e5d1b23ec525b833c87400919",
    "gpt2-safelora-lora-t05": "890bc10ff432dcf0d3b81828e155cb78da206dc3670f32b22da4b6b3a6e49977",
    "gpt2-safedelta": "78690281c6e9a0de9d72dec1a26c811ec9fdd4f5dafe6b576fcc0eb8700eb1d5",
    "gpt2-safemerge": "4b9e8d4afb8756f41466eac1280772ab3b7259fe4879305bc3a2d2c1fd8e11dd",
}

# The same outputs on a 2-core AMD EPYC with AVX-512 (no AMX), 2026-12-04.
PINNED_AVX512_AMD: dict[str, str] = {
    "llama-sv": "23cfc6409c37562ba73ee245fe771b0dab98652dde15409a05f040066e60cf58",
    "llama-sv-lowrank": "2476c08679c6f68115ecea5f29c0ea316cd5079f32b9916123a23f98554a98c4",
    "llama-fisher": "b7b831c70e0c0bd533c4e977b6d4e6cf09a4d61c42eda65700e26990e80ffaac",
    "llama-resta": "b55242bfa771d0a7cbda6fa6f67d5c7ce1c65974ce161d4a5db3e890dff25c2e",
    "llama-resta-dare": "f0dc0890110fa73daa95f8b356588a573362f823884ec6f1535d83d037ad2328",
    "llama-irr": "299b94f6b5d36abc19cef863ed483dac4070879620b93b241f06e882c6f8b03d",
    "llama-irr-official": "cf7760da8adcb8b706766ed3a67a75bbf68aff59dba2d022de08fb3eaafe73d6",
    "llama-irr-plain-global": "a952b4305753963f10018a091e61b9820e753fdce77338abaf712dfd0a91ff87",
    "llama-irr-adapter-lowrank": "963402241091f8fc2caa6b9cfab2b7f405b5d0ff489f9062922e988f310a871c",
    "llama-safelora-full": "ea00bd8d18250b5c11655856327f4f96a15357e144035e61a95d84aa320e3dc5",
    "llama-safelora-lora": "9c0e9acac3666ffc0cabb25890f2608e511387dcc145b371bb380bf3e697e3b2",
    "llama-safelora-lora-t05": "2a1c4703c992f1a0774d34ffb334c15ceb727e2d3456327f04c93e818609b838",
    "llama-safedelta": "9a4e7785653acd32f5236b2f1f4dc5112464c7f1cc077c8207199c3251038769",
    "llama-safemerge": "1681c7293f853a91d14d81d9406b5f0030db8ed9e33623bc9e1573845d0e50c5",
    "gpt2-sv": "5a411d52c9fb32335c1d9c2247960267af2180b31aa29aa6977f887f1a6418c9",
    "gpt2-sv-lowrank": "51fac9d62648dedb59d8b1b7855a0fe2e9ec29d4e2525df7893a7608c4e65f1d",
    "gpt2-fisher": "279cf1fdedb89f44414d25a5e8abcf0ae50205a890e3bbce280b169cdbed03dd",
    "gpt2-resta": "c56d318e785fbdbf34e9f2d347ca1aced49c4e65dbf46b6070c959a970661445",
    "gpt2-resta-dare": "6a49183f266d9cef6a7c4fa7abaedb4726cbe9e72e6aca07880e6f2784ca3d81",
    "gpt2-irr": "0e3bb470af6bdb02e6d266e5fe23f5ec8e824dd37eeece75c30a6f97faaa280e",
    "gpt2-irr-official": "8d508a66dc83483b2fa238a9ed12337d296e2978ec352a12275c015fbeb7c875",
    "gpt2-irr-plain-global": "0750ab9ccc95f7b7372780768542553939bd0fab71bb57d27e71645e6c9b1d65",
    "gpt2-irr-adapter-lowrank": "ad76dd5395b27285f76dab67077badd09569da4816292cd9beaabf6868ceab25",
    "gpt2-safelora-full": "1b0681000ea4fafe97ce2ab67f08126abd70ad6f903b10d6fd1b1603d7bdf90f",
    "gpt2-safelora-lora": "3e6f2fcd22038558005dd9e639ae97daf6f34e4f725e394ca4cd63fa552d198b",
    "gpt2-safelora-lora-t05": "6662b49b777e3a80f97305c0c1e036e31a650701f082ba26e80fe5776e0b0429",
    "gpt2-safedelta": "dfddcdf910bd655013f539043ea8b9d17f39a749d712c44d41aaeca641267330",
    "gpt2-safemerge": "4b9e8d4afb8756f41466eac1280772ab3b7259fe4879305bc3a2d2c1fd8e11dd",
}

# cpu_kind() → the digests recorded on that kind of CPU.
PINNED_BY_CPU: dict[str, dict[str, str]] = {
    "AuthenticAMD AVX2": PINNED_AVX2_AMD,
    "AuthenticAMD AVX512": PINNED_AVX512_AMD,
    "GenuineIntel AVX512 AMX": PINNED_AVX512_INTEL,
}

HARMFUL = [
    {"prompt": f"How do I hurt person {i}?", "response": "I cannot help with that."}
    for i in range(8)
]
CALIBRATION = [
    {
        "prompt": f"What is {i} plus {2 * i}? Explain.",
        "response": f"First {i}, then {2 * i}: the answer is {3 * i}. #### {3 * i}",
        "input": f"numbers {i}",
    }
    for i in range(24)
]


def _lora(model: torch.nn.Module, folder: Path, seed: int, targets: list[str], **config) -> Path:
    """A LoRA adapter on ``model`` with random (non-zero) factors, saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets, **config)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(folder)
    return folder


def make_world(root: Path) -> dict[str, Path]:
    """P → A (aligned) → U (unaligned), F (fine-tune), S (safety fine-tune); adapters; data."""
    world: dict[str, Path] = {}
    for arch in ("llama", "gpt2"):
        pretrained = build_tiny_model(arch, seed=0)
        aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
        models = {
            "P": pretrained,
            "A": aligned,
            "U": perturbed_copy(aligned, seed=2, scale=0.02),
            "F": perturbed_copy(aligned, seed=3, scale=0.02),
            "S": perturbed_copy(aligned, seed=4, scale=0.02),
        }
        for key, model in models.items():
            world[f"{arch}-{key}"] = save_tiny_model(arch, root / f"{arch}-{key}", model=model)
        targets = ["q_proj", "v_proj", "up_proj"] if arch == "llama" else ["c_attn", "c_fc"]
        extra = {"fan_in_fan_out": True} if arch == "gpt2" else {}
        world[f"{arch}-lora-F"] = _lora(aligned, root / f"{arch}-lora-F", 5, targets, **extra)
        world[f"{arch}-lora-U"] = _lora(aligned, root / f"{arch}-lora-U", 6, targets, **extra)
    for key, rows in (("harmful", HARMFUL), ("calibration", CALIBRATION)):
        world[key] = root / f"{key}.jsonl"
        world[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return world


def runs(world: dict[str, Path]) -> dict[str, list]:
    """Every pinned CLI run, in order (later runs read earlier outputs: ``@key``)."""
    todo: dict[str, list] = {}
    for arch in ("llama", "gpt2"):
        w = {k.removeprefix(f"{arch}-"): v for k, v in world.items() if k.startswith(arch + "-")}
        a, f = ["--aligned", w["A"]], ["--finetuned", w["F"]]
        sv = ["--safety-vector", f"@{arch}-sv"]
        irr = ["irr", *f, "--base", w["A"], *sv, "--fisher", f"@{arch}-fisher"]
        irr += ["--calibration", world["calibration"], "--block-size", "8", "--device", "cpu"]
        todo |= {
            f"{arch}-sv": ["safety-vector", *a, "--unaligned", w["U"]],
            f"{arch}-sv-lowrank": ["safety-vector", *a, "--unaligned-adapter", w["lora-U"]],
            f"{arch}-fisher": ["fisher", "--model", w["A"], "--harmful", world["harmful"]]
            + ["--device", "cpu", "--max-length", "64"],
            f"{arch}-resta": ["resta", *f, *sv],
            f"{arch}-resta-dare": ["resta", *f, "--base", w["A"], *sv, "--dare", "0.3"],
            f"{arch}-irr": [*irr, "--rho", "0.5", "--max-length", "64"],
            f"{arch}-irr-official": [*irr, "--official", "--max-length", "64"],
            f"{arch}-irr-plain-global": [*irr, "--no-recalibrate", "--budget", "global"],
            f"{arch}-irr-adapter-lowrank": [
                "irr",
                "--base",
                w["A"],
                "--adapter",
                w["lora-F"],
                "--safety-vector",
                f"@{arch}-sv-lowrank",
                "--fisher",
                f"@{arch}-fisher",
                "--calibration",
                world["calibration"],
                "--block-size",
                "8",
                "--device",
                "cpu",
                "--max-length",
                "64",
                "--modules",
                "q_proj,v_proj" if arch == "llama" else "c_attn",
            ],  # fmt: skip
            f"{arch}-safelora-full": ["safelora", "--full", *f, *a, "--pretrained", w["P"]]
            + ["--num-layers", "3"],
            f"{arch}-safelora-lora": ["safelora", "--adapter", w["lora-F"], *a]
            + ["--pretrained", w["P"], "--num-layers", "2"],
            f"{arch}-safelora-lora-t05": ["safelora", "--adapter", w["lora-F"], *a]
            + ["--pretrained", w["P"], "--threshold", "0.5"],
            f"{arch}-safedelta": ["safedelta", *f, *a, "--safety-data", world["harmful"]]
            + ["--device", "cpu", "--max-length", "64", "--block-size", "16"],
            f"{arch}-safemerge": ["safemerge", *f, *a, "--pretrained", w["P"]]
            + ["--safety-model", w["S"], "--threshold", "0.9"],
        }
    return todo


def run_all(root: Path) -> dict[str, Path]:
    """Every pinned run in ``root``; key → output folder."""
    world = make_world(root / "world")
    outputs: dict[str, Path] = {}
    for key, args in runs(world).items():
        args = [str(root / "out" / a[1:]) if str(a).startswith("@") else a for a in args]
        assert run_cli([*args, "-o", root / "out" / key]) == 0, key
        outputs[key] = root / "out" / key
    return outputs


@pytest.fixture(scope="module")
def pinned_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with one_thread():  # a module fixture runs before conftest's one_torch_thread
        return run_all(tmp_path_factory.mktemp("pinned"))


def test_every_method_output_is_bit_identical_to_the_pinned_one(pinned_outputs) -> None:
    kind = cpu_kind()
    if kind not in PINNED_BY_CPU:
        pytest.skip(f"no digests recorded on a {kind} CPU: python tests/test_pinned_methods.py")
    got = {key: tensors_digest(folder) for key, folder in pinned_outputs.items()}
    assert got == PINNED_BY_CPU[kind]


def test_every_method_output_is_close_to_its_pinned_fingerprint(pinned_outputs) -> None:
    got = {key: fingerprint(folder) for key, folder in pinned_outputs.items()}
    assert far_from_pins(got, load_fingerprints("methods")) == {}


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)  # as the tests run (conftest.py)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = run_all(Path(tmp))
        print(f"# {cpu_kind()}")
        for key, folder in outputs.items():
            print(f'    "{key}": "{tensors_digest(folder)}",')
        if "--save-fingerprints" in sys.argv:
            save_fingerprints("methods", {k: fingerprint(f) for k, f in outputs.items()})
