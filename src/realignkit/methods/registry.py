"""Recipes: every re-alignment method in the package, callable the same way.

The demo, the sweep and the real-model benchmark run "every method present" through this
registry, so a new method shows up there as soon as its module registers a recipe:

    @recipe("resta")
    def _resta(job: RealignJob, out: Path) -> Realigned: ...

A recipe takes a :class:`RealignJob` (all the inputs any method may need; each uses what it
needs) and an output folder, and returns where the re-aligned model is. ``params`` lets a
sweep pass a method's hyper-parameters (for example ``{"gamma": 0.3}``); recipes fall back
to the papers' defaults.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHOD_MODULES = (
    "realignkit.methods.resta_recipes",
    "realignkit.methods.irr",
    "realignkit.methods.safelora",
)


@dataclass
class RealignJob:
    """Everything a re-alignment method may need; unused fields may stay None."""

    aligned: Path  # the safety-aligned chat model θ_A (also θ_B of the fine-tune)
    safety_vector: Path  # folder written by `realignkit safety-vector`
    finetuned: Path | None = None  # a full fine-tune of `aligned` ...
    adapter: Path | None = None  # ... or a LoRA adapter on top of `aligned`
    pretrained: Path | None = None  # the pre-alignment base (Safe LoRA's W_P)
    unaligned: Path | None = None  # the harmful fine-tune of `aligned`
    harmful: Path | None = None  # harmful prompts (+ safe responses): Fisher data
    calibration: Path | None = None  # downstream task prompts: recalibration data
    workdir: Path | None = None  # cache for reusable artefacts (Fisher scores, Hessians)
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = True


@dataclass
class Realigned:
    """A re-aligned model: a model folder, optionally with a LoRA adapter on top."""

    model: Path
    adapter: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


Recipe = Callable[[RealignJob, Path], Realigned]
RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Register a recipe under ``name``."""

    def register(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        return fn

    return register


def load_all() -> dict[str, Recipe]:
    """Import every method module (each registers its recipes) and return the registry.

    A module that is not there (a method not yet in this version) is skipped.
    """
    for module in METHOD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return RECIPES
