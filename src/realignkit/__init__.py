"""realignkit: restore the safety of fine-tuned language models after the fact.

The Python API mirrors the command line; names are imported lazily, so ``import realignkit``
stays instant and pulls in torch only when a function is used:

    from realignkit import compute_safety_vector, resta, FinetunedWeights, SafetyVector
    compute_safety_vector("aligned", "sv", unaligned="unaligned")
    with FinetunedWeights("finetuned", base="aligned") as ft, SafetyVector("sv") as sv:
        resta(ft, sv, "realigned", gamma=0.5, dare_p=0.3)
"""

from __future__ import annotations

import importlib
from typing import Any

from realignkit._version import __version__

# public name -> module that defines it (CLI command in the comment)
_EXPORTS = {
    "RealignError": "realignkit.errors",
    "CheckpointReader": "realignkit.checkpoint",
    "CheckpointWriter": "realignkit.checkpoint",
    "FinetunedWeights": "realignkit.checkpoint",
    "LoraAdapter": "realignkit.checkpoint",
    "compute_safety_vector": "realignkit.methods.safety_vector",  # safety-vector
    "SafetyVector": "realignkit.methods.safety_vector",
    "resta": "realignkit.api",  # resta
    "safedelta": "realignkit.api",  # safedelta
    "safemerge": "realignkit.api",  # safemerge
    "realign": "realignkit.api",  # any declared method
    "Method": "realignkit.contract",
    "load_methods": "realignkit.methods.registry",
    "compute_fisher": "realignkit.calib.fisher",  # fisher
    "FisherScores": "realignkit.calib.fisher",
    "irr": "realignkit.methods.irr",  # irr
    "IRRSettings": "realignkit.methods.irr",
    "safelora_adapter": "realignkit.methods.safelora",  # safelora
    "safelora_full": "realignkit.methods.safelora",  # safelora --full
    "evaluate": "realignkit.eval",  # eval
    "judge_file": "realignkit.eval",  # judge
    "compare_reports": "realignkit.eval",  # compare
    "finetune": "realignkit.train.finetune",  # finetune
    "unalign": "realignkit.train.finetune",  # unalign
    "run_sweep": "realignkit.sweep",  # sweep
    "tune": "realignkit.tuning",  # tune
    "RECIPES": "realignkit.methods.registry",
    "load_recipes": "realignkit.methods.registry",
}


def __getattr__(name: str) -> Any:
    if name == "load_recipes":
        return importlib.import_module("realignkit.methods.registry").load_all
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'realignkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
