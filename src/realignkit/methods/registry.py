"""Recipes: every re-alignment method in the package, callable the same way.

The demo, the sweep and the real-model benchmark run "every method present" through this
registry. Every module of ``realignkit.methods`` is imported by :func:`load_all`, so a new
method is one new module: a module-level :class:`~realignkit.contract.Method`
declaration becomes a recipe (run by :mod:`realignkit.execute`) and a CLI command by itself.
Code outside the package may still register a hand-written recipe:

    @recipe("mine")
    def _mine(job: RealignJob, out: Path) -> Realigned: ...

A recipe takes a :class:`RealignJob` (all the inputs any method may need; each uses what it
needs, and a method may derive more from it: ``Method.job_inputs``) and an output folder, and
returns where the re-aligned model is. ``params`` lets a sweep pass a method's
hyper-parameters (for example ``{"gamma": 0.3}``), checked against their declarations.

Layers: ``contract.py`` (the method contract) < ``execute.py`` < the method modules < this
registry < sweep, demo, CLI.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realignkit.contract import Declares, Method, Param
from realignkit.execute import Sources, execute

NOT_METHODS = ("registry",)


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
    safety_model: Path | None = None  # the aligned model fine-tuned on a small safety set
    workdir: Path | None = None  # cache for reusable artefacts (Fisher scores, Hessians)
    # the unedited aligned model's Hessians kept in workdir too (~20 GB for a 7B model)
    share_hessians: bool = False
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = True


@dataclass
class Realigned:
    """A re-aligned model: a model folder, optionally with a LoRA adapter on top."""

    model: Path
    adapter: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Declaration(Declares):
    """What a hand-written recipe declares about itself (a declared :class:`Method` says it all
    in its own declaration): its checked parameters (``params``; strengths carry ``safer`` and
    ``search`` for ``tune``), the other parameter names it accepts unchecked (``accepts``),
    its paper's setting and its demo grid."""

    name: str
    params: tuple[Param, ...] = ()
    accepts: tuple[str, ...] = ()
    paper: Mapping[str, Any] = field(default_factory=dict)
    sweep_grid: Mapping[str, Any] = field(default_factory=dict)
    sweep_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.paper:
            self.resolve(self.paper, where="paper setting: ")

    def resolve(
        self, values: Mapping[str, Any], *, where: str | None = None, sweep: bool = False
    ) -> dict[str, Any]:
        """The given values, the declared ones checked (defaults filled in); a name neither
        declared nor accepted is a one-line error."""
        return {**values, **self.checked(values, where=where, sweep=sweep)}


Recipe = Callable[[RealignJob, Path], Realigned]
RECIPES: dict[str, Recipe] = {}
METHODS: dict[str, Method] = {}
DECLARED: dict[str, Method | Declaration] = {}


def recipe(
    name: str,
    *,
    params: Sequence[Param] = (),
    accepts: Sequence[str] = (),
    paper: Mapping[str, Any] | None = None,
    sweep_grid: Mapping[str, Any] | None = None,
) -> Callable[[Recipe], Recipe]:
    """Register a hand-written recipe under ``name``, with what it declares (see
    :class:`Declaration`)."""
    declaration = Declaration(
        name, tuple(params), tuple(accepts), dict(paper or {}), dict(sweep_grid or {})
    )

    def register(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        DECLARED[name] = declaration
        return fn

    return register


def declared_recipe(method: Method) -> Recipe:
    """The recipe of a declared method: the job's inputs to the executor's sources."""

    def run(job: RealignJob, out: Path) -> Realigned:
        values = {**method.sweep_defaults, **job.params}
        if any(p.name == "seed" for p in method.params):
            values.setdefault("seed", job.seed)
        params = method.resolve(values)
        needed = method.inputs_needed(params)
        sources = Sources(
            finetuned=job.finetuned,
            adapter=job.adapter,
            # every fine-tune of the sweep starts from the aligned model
            base=job.aligned if job.adapter is not None or "base" in needed else None,
            safety_vector=job.safety_vector if "safety_vector" in needed else None,
            aligned=job.aligned,
            pretrained=job.pretrained,
            safety_finetune=job.safety_model,
            safety_data=job.harmful,
            calibration=job.calibration,
        )
        if method.job_inputs is not None:  # inputs the method derives from the job (Fisher)
            for role, path in method.job_inputs(job, params, out).items():
                setattr(sources, role, path)
        cache = job.workdir if job.share_hessians else None
        output = execute(method, sources, out, params, overwrite=job.overwrite, hessian_cache=cache)
        info = {k: v for k, v in output.meta.get("parameters", {}).items() if v not in ((), [])}
        info.update(output.meta.get("summary", {}))
        if output.form == "adapter":  # to be loaded on the aligned model it was trained on
            return Realigned(model=Path(job.aligned), adapter=Path(out), info=info)
        return Realigned(model=Path(out), info=info)

    run.__doc__ = f"{method.name}: {method.summary}"
    return run


def register_method(method: Method) -> Method:
    """Register a declared method (its recipe included)."""
    METHODS[method.name] = method
    RECIPES[method.name] = declared_recipe(method)
    DECLARED[method.name] = method
    return method


def method_modules() -> list[str]:
    """Every module of ``realignkit.methods`` but this registry: the method modules."""
    import realignkit.methods as package

    return [
        f"{package.__name__}.{info.name}"
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
        if info.name not in NOT_METHODS and not info.name.startswith("_")
    ]


def load_all() -> dict[str, Recipe]:
    """Import every method module (each registers its recipes) and return the registry."""
    for name in method_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, Method) and value.recipe and value.name not in METHODS:
                register_method(value)
    return RECIPES


def load_methods() -> dict[str, Method]:
    """The declared methods (after importing every method module)."""
    load_all()
    return METHODS


def load_declarations() -> dict[str, Method | Declaration]:
    """What every recipe declares: its :class:`Method`, or a hand-written recipe's
    :class:`Declaration` (after importing every method module)."""
    load_all()
    return DECLARED


def paper_settings() -> dict[str, dict[str, Any]]:
    """``{recipe: its paper's setting}`` for every recipe that declares one, in registration
    order: what the real-model demo and benchmark run."""
    return {name: dict(d.paper) for name, d in load_declarations().items() if d.paper}
