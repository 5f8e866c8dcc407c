"""Registry recipes for RESTA and RESTA+DARE at the paper's settings (γ = 0.5, p = 0.3)."""

from __future__ import annotations

from pathlib import Path

from realignkit.checkpoint import FinetunedWeights
from realignkit.methods.registry import Realigned, RealignJob, recipe
from realignkit.methods.resta import resta
from realignkit.methods.safety_vector import SafetyVector


def _run(job: RealignJob, out: Path, dare_p: float | None) -> Realigned:
    gamma = float(job.params.get("gamma", 0.5))
    dare_p = float(job.params.get("dare_p", dare_p)) if dare_p is not None else None
    if job.adapter is not None:
        weights = FinetunedWeights(base=job.aligned, adapter=job.adapter)
    else:
        weights = FinetunedWeights(job.finetuned, base=job.aligned if dare_p else None)
    with weights, SafetyVector(job.safety_vector) as sv:
        resta(weights, sv, out, gamma=gamma, dare_p=dare_p, seed=job.seed, overwrite=job.overwrite)
    return Realigned(model=out, info={"gamma": gamma, "dare_p": dare_p or 0.0})


@recipe("resta")
def resta_recipe(job: RealignJob, out: Path) -> Realigned:
    """RESTA: θ_F + γ·v (γ from params, default 0.5)."""
    return _run(job, out, None)


@recipe("resta+dare")
def resta_dare_recipe(job: RealignJob, out: Path) -> Realigned:
    """RESTA with DARE on the fine-tuning delta (p from params, default 0.3)."""
    return _run(job, out, 0.3)
