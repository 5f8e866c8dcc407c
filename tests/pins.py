"""Pinned outputs: bit-identical on the kind of CPU that recorded them, close on every CPU.

Float reductions follow the CPU's kernels (ATen's vectorised paths and MKL's per-ISA code), so
the same code writes different low bits on an AVX2 AMD EPYC and on an AVX-512 Intel Xeon
(measured: the Fisher, IRR, Safe Delta and Safe LoRA-on-adapter outputs differ). A pin is
therefore two records of one output folder:

- ``tensors_digest``: sha256 of every tensor's name, dtype, shape and bytes. Compared only
  with the digests recorded on the same kind of CPU (:func:`cpu_kind`); on a kind with none,
  the bit-exact check skips and says how to record them.
- ``fingerprint``: per tensor, its norm and two projections on fixed ±1 vectors, in float64.
  Compared on every CPU within :data:`FINGERPRINT_RTOL` of the tensor's norm: wide enough for
  another CPU's rounding, narrow enough that a 1 % change of a method's strength fails
  (measured below; the latter is pinned in tests/test_pins.py).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from helpers import load_folder_tensors

FINGERPRINTS = Path(__file__).parent / "data" / "pinned_fingerprints.json"
FINGERPRINT_RTOL = 1e-3
"""Largest fingerprint difference allowed, relative to the pinned tensor's norm. Measured on
an Intel Xeon between its AVX-512 kernels and its AVX2 ones (``ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2``), over every pinned output: at most 4.4e-5 (IRR's
recalibrations; RESTA, DARE, the safety vectors and SafeMERGE are bit-identical), except IRR
with refinement steps (below). Against that, γ 0.5 → 0.495 moves RESTA's output by 6e-3 and
ρ 0.5 → 0.495 moves IRR's by 6e-2 to 1.2e-1."""
REFINED_RTOL = 2e-2
"""For IRR with ``refine_steps``: each refinement re-ranks the entries, so a rounding flip
of one near-tie carries on (measured across the two kernels above: 4.4e-3)."""


def cpu_kind() -> str:
    """What decides a float kernel's rounding here: the vendor (MKL takes other paths on AMD),
    ATen's vector ISA, and AMX, e.g. ``GenuineIntel AVX512 AMX`` or ``AuthenticAMD AVX2``."""
    vendor, flags = platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                vendor = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    kind = f"{vendor} {torch.backends.cpu.get_cpu_capability()}"
    return kind + (" AMX" if "amx_tile" in flags else "")


@contextmanager
def one_thread() -> Iterator[None]:
    """Pinned runs use one torch thread, as recorded: the thread count splits reductions too
    (measured: GPT-2's IRR and Safe Delta digests differ between one and two threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tensors_digest(folder: Path) -> str:
    """sha256 over every output tensor's name, dtype, shape and bytes, in name order (the
    shard layout and the model card are not hashed)."""
    h = hashlib.sha256()
    tensors = load_folder_tensors(folder)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _signs(numel: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (numel,), generator=gen, dtype=torch.float64) * 2 - 1


def fingerprint(folder: Path) -> dict[str, list[float]]:
    """Per tensor: [norm, projection on ±1 signs (seed 0), on ±1 signs (seed 1)], in float64.

    A projection moves by about the norm of any change, wherever in the tensor it lands."""
    prints = {}
    for name, t in sorted(load_folder_tensors(folder).items()):
        flat = t.reshape(-1).to(torch.float64)
        prints[name] = [
            float(flat.norm()),
            float(flat @ _signs(flat.numel(), 0)),
            float(flat @ _signs(flat.numel(), 1)),
        ]
    return prints


def fingerprint_distance(got: dict[str, list[float]], pinned: dict[str, list[float]]) -> float:
    """Largest difference of one fingerprint entry, relative to its tensor's pinned norm
    (inf where the tensor names differ)."""
    if got.keys() != pinned.keys():
        return float("inf")
    worst = 0.0
    for name, want in pinned.items():
        scale = max(want[0], 1e-12)
        worst = max(worst, *(abs(a - b) / scale for a, b in zip(got[name], want, strict=True)))
    return worst


def load_fingerprints(group: str) -> dict[str, dict[str, list[float]]]:
    return json.loads(FINGERPRINTS.read_text())[group]


def save_fingerprints(group: str, prints: dict[str, dict[str, list[float]]]) -> None:
    every = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}
    every[group] = prints
    FINGERPRINTS.parent.mkdir(parents=True, exist_ok=True)
    FINGERPRINTS.write_text(json.dumps(every, indent=1, sort_keys=True) + "\n")


def far_from_pins(
    got: dict[str, dict[str, list[float]]],
    pinned: dict[str, dict[str, list[float]]],
    rtol: dict[str, float] | None = None,
) -> dict[str, float]:
    """The runs whose fingerprint is beyond its tolerance of the pinned one (``rtol`` per
    run, :data:`FINGERPRINT_RTOL` for the others), with their distance."""
    rtol = rtol or {}
    distances = {
        key: fingerprint_distance(got.get(key, {}), prints) for key, prints in pinned.items()
    }
    return {key: d for key, d in distances.items() if not d <= rtol.get(key, FINGERPRINT_RTOL)}
