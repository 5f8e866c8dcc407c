"""Python calls that mirror the CLI commands of declared methods (`realignkit.resta`, ...).

Each is :func:`realignkit.execute.execute` with the method's declaration; inputs may be paths
or already opened objects (:class:`~realignkit.checkpoint.FinetunedWeights`,
:class:`~realignkit.methods.safety_vector.SafetyVector`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realignkit.execute import Output, Sources, execute, sources_of
from realignkit.methods.registry import load_methods

PathLike = str | os.PathLike[str]


@dataclass
class RestaResult:
    """What :func:`resta` wrote."""

    path: Path
    edited: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)


def _sources(finetuned: Any, **others: Any) -> Sources:
    if finetuned is None or isinstance(finetuned, (str, os.PathLike)):
        sources = Sources(finetuned=finetuned)
    else:
        sources = sources_of(finetuned)
    for key, value in others.items():
        if value is not None:
            setattr(sources, key, getattr(value, "dir", value))
    return sources


def realign(
    method: str,
    out: PathLike,
    *,
    finetuned: Any = None,
    base: PathLike | None = None,
    adapter: PathLike | None = None,
    safety_vector: Any = None,
    aligned: PathLike | None = None,
    pretrained: PathLike | None = None,
    safety_model: PathLike | None = None,
    safety_adapter: PathLike | None = None,
    safety_data: PathLike | None = None,
    fisher: Any = None,
    calibration: PathLike | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    workers: int = 2,
    device: str | None = None,
    **params: Any,
) -> Output:
    """Run the declared method ``method`` (``realignkit <method>``) and write ``out``.

    Every input of :data:`~realignkit.contract.INPUTS` may be given (those the method does
    not read are ignored), so a new method module is callable here without an edit;
    ``workers`` serves weight methods, ``device`` layer methods."""
    declared = load_methods()
    if method not in declared:
        from realignkit.errors import RealignError

        raise RealignError(f"unknown method {method!r}; declared: {', '.join(sorted(declared))}")
    sources = _sources(
        finetuned,
        base=base,
        adapter=adapter,
        safety_vector=safety_vector,
        aligned=aligned,
        pretrained=pretrained,
        safety_finetune=safety_model,
        safety_adapter=safety_adapter,
        safety_data=safety_data,
        fisher=fisher,
        calibration=calibration,
    )
    layer = declared[method].kind == "layer"
    run: dict[str, Any] = {"device": device} if layer else {"workers": workers}
    return execute(
        declared[method],
        sources,
        out,
        params,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        **run,
    )


def resta(
    finetuned: Any,
    safety_vector: Any,
    out: PathLike,
    *,
    gamma: float = 0.5,
    dare_p: float | None = None,
    seed: int = 0,
    include: Iterable[str] | str | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    workers: int = 2,
) -> RestaResult:
    """Write θ_F + γ·v (optionally with DARE on the fine-tuning delta) as a model folder:
    :func:`realign` with RESTA's parameters typed."""
    params = {"gamma": gamma, "dare_p": dare_p, "seed": seed, "include": include or ()}
    output = realign(
        "resta",
        out,
        finetuned=finetuned,
        safety_vector=safety_vector,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        workers=workers,
        **params,
    )
    return RestaResult(output.path, output.edited, output.copied)


def safedelta(finetuned: Any, aligned: PathLike, safety_data: PathLike, out: PathLike, **kw: Any):
    """`realignkit safedelta` (see :mod:`realignkit.methods.safedelta`)."""
    return realign(
        "safedelta", out, finetuned=finetuned, aligned=aligned, safety_data=safety_data, **kw
    )


def safemerge(
    finetuned: Any,
    aligned: PathLike,
    pretrained: PathLike,
    safety_model: PathLike,
    out: PathLike,
    **kw: Any,
):
    """`realignkit safemerge` (see :mod:`realignkit.methods.safemerge`)."""
    return realign(
        "safemerge",
        out,
        finetuned=finetuned,
        aligned=aligned,
        pretrained=pretrained,
        safety_model=safety_model,
        **kw,
    )
