"""PEFT LoRA adapters as per-weight deltas, one module at a time.

A LoRA adapter changes a base weight ``W`` (named as in the base checkpoint, e.g.
``model.layers.0.self_attn.q_proj.weight``) into ``W + scale · B·A``. This module reads an
adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) and hands out that
delta for one weight at a time, so a 7B base plus adapter never has to be merged in memory.

Handled: ``lora_alpha / r`` and rsLoRA's ``lora_alpha / sqrt(r)`` scaling, per-module
``rank_pattern`` / ``alpha_pattern``, ``fan_in_fan_out`` (GPT-2's Conv1D stores weights
transposed), LoRA on embeddings, and full tensors saved by ``modules_to_save`` or
``save_embedding_layers`` (they replace the base tensor). DoRA is refused: its update is not
a fixed delta.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint.reader import CheckpointReader
from realignkit.checkpoint.source import resolve_model_dir
from realignkit.errors import RealignError

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")
_EMB_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)$")


@dataclass(frozen=True)
class LoraFactors:
    """``delta = scale · B @ A`` (transposed when ``transpose``), for one base weight."""

    lora_a: torch.Tensor  # [r, in]
    lora_b: torch.Tensor  # [out, r]
    scale: float
    transpose: bool

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        delta = (self.lora_b.to(dtype) @ self.lora_a.to(dtype)) * self.scale
        return delta.T.contiguous() if self.transpose else delta


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha patterns: a key matches a module name as a dotted-suffix regex."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter folder, read lazily."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir: Path = resolve_model_dir(path, what="adapter")
        config_path = self.dir / "adapter_config.json"
        if not config_path.exists():
            raise RealignError(f"{self.dir} is not a PEFT adapter folder (no adapter_config.json)")
        self.config: dict[str, Any] = json.loads(config_path.read_text())
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise RealignError(f"{self.dir}: adapter type {peft_type} is not LoRA")
        if self.config.get("use_dora"):
            raise RealignError(f"{self.dir}: DoRA adapters are not supported (not a fixed delta)")
        weights = self.dir / "adapter_model.safetensors"
        if not weights.exists():
            raise RealignError(f"{self.dir}: no adapter_model.safetensors")
        self._reader = CheckpointReader(self.dir, what="adapter", files=[weights])
        infos = self._reader.names
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        self.base_model_name: str | None = self.config.get("base_model_name_or_path")
        self._lora: dict[str, tuple[str, str, bool]] = {}  # base weight name -> (A key, B key, emb)
        self._full: dict[str, str] = {}  # base tensor name -> key of a full replacement tensor
        pairs: dict[str, dict[str, str]] = {}
        for key in infos:
            name = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
            match = LORA_KEY.match(name) or _EMB_KEY.match(name)
            if match:
                pairs.setdefault(match["module"], {})[match["kind"][-1]] = key
                pairs[match["module"]]["emb"] = "1" if "embedding" in match["kind"] else ""
            else:
                # modules_to_save / saved embedding layers: a full tensor for the base weight.
                self._full[name.replace(".base_layer.", ".")] = key
        for module, found in pairs.items():
            if "A" not in found or "B" not in found:
                raise RealignError(f"{self.dir}: module {module!r} lacks lora_A or lora_B")
            self._lora[f"{module}.weight"] = (found["A"], found["B"], bool(found["emb"]))
        if not self._lora and not self._full:
            raise RealignError(f"{self.dir}: the adapter holds no LoRA weights")
        self._check_config_matches_tensors()

    def _check_config_matches_tensors(self) -> None:
        """The config's ranks and target modules describe the saved tensors (PEFT would
        otherwise load part of the adapter, or fail with a traceback)."""
        rank_pattern = self.config.get("rank_pattern") or {}
        for weight, (key_a, key_b, _) in self._lora.items():
            module = weight.removesuffix(".weight")
            rank_a, rank_b = self._reader.shape(key_a)[0], self._reader.shape(key_b)[-1]
            declared = _pattern_value(rank_pattern, module, self.config.get("r"))
            if rank_a != rank_b or (declared is not None and int(declared) != rank_a):
                raise RealignError(
                    f"adapter {str(self.dir)!r}: {module!r} has rank {rank_a} (lora_A) and "
                    f"{rank_b} (lora_B) but adapter_config.json says r={declared}"
                )
        targets = self.config.get("target_modules")
        if not targets or targets == "all-linear":
            return
        modules = [w.removesuffix(".weight") for w in self._lora]
        if isinstance(targets, str):
            stray = [m for m in modules if not re.fullmatch(targets, m)]
            unused: list[str] = []
        else:
            stray = [m for m in modules if not any(m == t or m.endswith("." + t) for t in targets)]
            unused = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
        if stray or unused:
            detail = (
                f"tensors for {stray[0]!r}, which target_modules {targets} does not name"
                if stray
                else f"target_modules names {unused[0]!r} but no tensor adapts it"
            )
            raise RealignError(
                f"adapter {str(self.dir)!r}: adapter_config.json and the saved tensors disagree "
                f"({detail})"
            )

    # -- description --------------------------------------------------------------------------
    def target_weights(self) -> list[str]:
        """Base-checkpoint names of the weights this adapter changes with a low-rank delta."""
        return list(self._lora)

    def full_tensors(self) -> list[str]:
        """Base-checkpoint names of tensors the adapter replaces whole (modules_to_save)."""
        return list(self._full)

    @property
    def keys(self) -> list[str]:
        """Every tensor key of ``adapter_model.safetensors``, as PEFT saved it."""
        return list(self._reader.names)

    def raw(self, key: str) -> torch.Tensor:
        """One tensor of the adapter file by its saved key (for rewriting an adapter)."""
        return self._reader.get(key)

    def lora_keys(self, weight_name: str) -> tuple[str, str]:
        """The saved keys of the A and B factors of ``weight_name``."""
        if weight_name not in self._lora:
            raise RealignError(f"adapter {str(self.dir)!r} has no LoRA factors for {weight_name!r}")
        key_a, key_b, _ = self._lora[weight_name]
        return key_a, key_b

    def touches(self, name: str) -> bool:
        return name in self._lora or name in self._full

    def scale_for(self, weight_name: str, rank: int) -> float:
        module = weight_name.removesuffix(".weight")
        alpha = _pattern_value(
            self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", rank)
        )
        if self.config.get("use_rslora"):
            return float(alpha) / math.sqrt(rank)
        return float(alpha) / rank

    # -- data ---------------------------------------------------------------------------------
    def factors(self, weight_name: str) -> LoraFactors:
        """The low-rank factors of ``weight_name``'s delta."""
        if weight_name not in self._lora:
            raise RealignError(f"adapter {str(self.dir)!r} has no LoRA factors for {weight_name!r}")
        key_a, key_b, is_embedding = self._lora[weight_name]
        lora_a, lora_b = self._reader.get(key_a), self._reader.get(key_b)
        if lora_a.shape[0] != lora_b.shape[1]:
            raise RealignError(f"adapter {str(self.dir)!r}: ranks of {weight_name!r} disagree")
        scale = self.scale_for(weight_name, lora_a.shape[0])
        # PEFT's embedding LoRA stores the product transposed relative to the weight.
        transpose = is_embedding or self.fan_in_fan_out
        return LoraFactors(lora_a, lora_b, scale, transpose)

    def delta(self, weight_name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale · B·A`` in the layout of the base weight."""
        return self.factors(weight_name).dense(dtype)

    def full_tensor(self, name: str) -> torch.Tensor:
        return self._reader.get(self._full[name])

    def check_against(self, base: CheckpointReader) -> None:
        """Every adapted weight exists in ``base`` with a matching shape, or a one-line error."""
        for name in self._lora:
            if name not in base:
                raise RealignError(
                    f"adapter {str(self.dir)!r} targets {name!r}, which is not in model "
                    f"{str(base.dir)!r}"
                )
            key_a, key_b, _ = self._lora[name]
            rows, cols = self._reader.shape(key_b)[0], self._reader.shape(key_a)[1]
            transpose = self._lora[name][2] or self.fan_in_fan_out
            expected = (cols, rows) if transpose else (rows, cols)
            if tuple(base.shape(name)) != expected:
                raise RealignError(
                    f"adapter {str(self.dir)!r}: delta for {name!r} has shape {expected}, the "
                    f"model's tensor has {tuple(base.shape(name))}"
                )
        for name, key in self._full.items():
            if name not in base:
                raise RealignError(
                    f"adapter {str(self.dir)!r} saves {name!r}, which is not in model "
                    f"{str(base.dir)!r}"
                )
            if tuple(base.shape(name)) != self._reader.shape(key):
                raise RealignError(f"adapter {str(self.dir)!r}: tensor {name!r} has another shape")

    def close(self) -> None:
        self._reader.close()
