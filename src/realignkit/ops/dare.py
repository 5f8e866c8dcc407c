"""DARE (Drop And REscale, Yu et al. 2023) on a delta tensor.

Each entry of the delta is dropped with probability ``p`` and the kept entries are divided by
``1 − p``, so the expected delta is unchanged. This is the DARE paper's rescale, which RESTA
uses; mergekit's ``dare`` methods can instead rescale to preserve the L1 norm, which is a
different operator.

The mask of a tensor comes from a generator seeded by (seed, tensor name): results never
depend on the order tensors are processed in or on the number of threads.
"""

from __future__ import annotations

import hashlib

import torch


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the run seed and the tensor's name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, seed: int, name: str
) -> torch.Tensor:
    """Boolean mask of kept entries: each kept with probability ``1 − p``."""
    generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
    return torch.rand(shape, generator=generator, dtype=torch.float32) >= p


def dare(delta: torch.Tensor, p: float, seed: int, name: str) -> torch.Tensor:
    """Drop entries of ``delta`` with probability ``p``; rescale the rest by ``1 / (1 − p)``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {p}")
    if p == 0.0:
        return delta
    keep = dare_keep_mask(delta.shape, p, seed, name)
    # Divide (not multiply by 1/(1−p)): kept entries are exactly δ/(1−p). Multiplying by the
    # boolean mask is cheaper than torch.where and zeroes the dropped entries.
    return (delta / (1.0 - p)).mul_(keep)
