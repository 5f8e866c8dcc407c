"""Digests of realignkit's default IRR outputs, computed with the implementation before the
``--official`` options were added (commit bf17f86), so that default results stay bit-identical.

``pinned_runs`` is the scenario; bits are pinned per kind of CPU and closeness on every CPU
(see pins.py). ``python tests/irr_pinned.py`` prints this CPU's digests (to add under its
kind); ``--save-fingerprints`` rewrites the fingerprints, only when a change of the default
results is intended.
"""

from __future__ import annotations

from pathlib import Path

import torch

TORCH_VERSION = "2.13.0+cpu"  # the digests are of this build's float arithmetic
# Recorded on the first session's machine (2026-12-01): an AMD EPYC with AVX-512 (cpu_kind()
# "AuthenticAMD AVX512"), as a rerun on such a machine on 2026-12-04 reproduced bit for bit.
PINNED_FIRST = {
    "llama-recal": "393979c6e81672458e80808d55c807eb1a8ac90b6c6198c5bdd8e5499545977d",
    "llama-plain": "42b02df0620da97d9af89bf7426b5e21e31984b4a2f08ce82d978c65d660a050",
    "llama-recal-refine": "27f8a8789116798de1db5bbed48d355454de202a392786362cfbb15b5ca2854e",
    "llama-magnitude-matrix": "4f4bcec21c333d56894ff9ad515b1ef05e8ae24b6088d4cc28f36b759503d96a",
    "gpt2-recal": "7b8c44fccc084fbb8b15f970952a40bba9c5f98ec5dad5c79f3bfc32832134ce",
    "gpt2-recal-block128": "65210c3125826afbba8a6a53350d10150acd476c762702316e0052534a855db8",
}
# The same implementation's digests on an AVX2-only CPU (AMD EPYC Zen 3, 2026-12-02): float
# reductions follow the CPU's kernels, so a digest is bit-identity on one kind of CPU.
PINNED_AVX2 = {
    "llama-recal": "7273b4e967eb243fba47f008d89b3937ddc0b75f599f51f7bd1168e3c42f640e",
    "llama-plain": "42b02df0620da97d9af89bf7426b5e21e31984b4a2f08ce82d978c65d660a050",
    "llama-recal-refine": "bb141e9c916bbc4b7f4d31f6a504ae7928eacf13bfbb69a8c057ea7b77dbcffd",
    "llama-magnitude-matrix": "f9fec56c5d0cba6cbd80d97091ab47f1880b0655a513336be77e6681855b1c9a",
    "gpt2-recal": "64bbf0012080ff7b417c8c6d5d9ab51e7a22f6df516bb9d479d522a5dde01f60",
    "gpt2-recal-block128": "7526ba83bfcd64fd8ed3238bec2cda0819eb2ae4873fdaa55be7e75b1ae3c9b0",
}
# The same on a 2-core Intel Xeon (AVX-512, AVX512-BF16, AMX), 2026-12-04.
PINNED_AVX512_INTEL: dict[str, str] = {
    "llama-recal": "6396aa11b9183519f3986afb76cd2ed1aef42d1342acc47ef867741865fe8dd0",
    "llama-plain": "42b02df0620da97d9af89bf7426b5e21e31984b4a2f08ce82d978c65d660a050",
    "llama-recal-refine": "1199ad945fc7ed3695d732647bb1cec48fec60934eb90d7cc61e42afabb43f7e",
    "llama-magnitude-matrix": "a91d39953c3974356a1c7396277949effcd8378e24b2a7876d4f1438e8726d2f",
    "gpt2-recal": "7a655246e4908ded6e397528819b2bb85d166f30ab11c959a54da18ed555d6e2",
    "gpt2-recal-block128": "be1d1954316feda90588b89dcfdd52133585c47cf13ca0ab57cc0c26d6f97ace",
}
# cpu_kind() → the digests recorded on that kind of CPU.
PINNED_BY_CPU = {
    "AuthenticAMD AVX2": PINNED_AVX2,
    "AuthenticAMD AVX512": PINNED_FIRST,
    "GenuineIntel AVX512 AMX": PINNED_AVX512_INTEL,
}


PINNED_SETTINGS = {
    "llama-recal": ("llama", dict(rho=0.5)),
    "llama-plain": ("llama", dict(rho=0.5, recalibrate=False)),
    "llama-recal-refine": ("llama", dict(rho=0.3, refine_steps=5)),
    "llama-magnitude-matrix": ("llama", dict(rho=0.7, mask="magnitude", budget="matrix")),
    "gpt2-recal": ("gpt2", dict(rho=0.5)),
    "gpt2-recal-block128": ("gpt2", dict(rho=1.0, block_size=128)),
}


def pinned_runs(root: Path, worlds: dict[str, dict]) -> dict[str, Path]:
    """Run every pinned setting on its world (see test_irr.make_world); name → output folder."""
    from test_irr import run_irr

    return {
        key: run_irr(worlds[arch], root / key, **settings).path
        for key, (arch, settings) in PINNED_SETTINGS.items()
    }


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from pins import cpu_kind, fingerprint, save_fingerprints, tensors_digest
    from test_irr import make_world

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        worlds = {arch: make_world(root / arch, arch) for arch in ("llama", "gpt2")}
        outputs = pinned_runs(root / "runs", worlds)
        print(f"# {cpu_kind()}")
        for key, folder in outputs.items():
            print(f'    "{key}": "{tensors_digest(folder)}",')
        if "--save-fingerprints" in sys.argv:
            save_fingerprints("irr", {k: fingerprint(f) for k, f in outputs.items()})
