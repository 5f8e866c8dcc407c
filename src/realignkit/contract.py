"""The method contract: a method declares what it needs and computes edits; nothing else.

A :class:`Method` is a small declared object, in the spirit of mergekit's merge methods:

* its ``name`` (the CLI command and the registry key), a ``version`` and a one-line summary;
* its :class:`Param` list: type, default, range, help, whether a sweep may vary it;
* the inputs it needs (:data:`INPUTS`: the fine-tuned weights, the base, the safety vector,
  the aligned or pre-trained model, a safety fine-tune, safety data...);
* one pure function. A *weight* method maps the tensors of one weight (:class:`WeightInputs`)
  to the edited tensor plus statistics; a *layer* method maps one linear layer's aligned and
  fine-tuned weights and the Hessian of its inputs on data (:class:`LayerInputs`) to the
  edited weight, the model being run block after block by the executor.

Opening checkpoints, validating layouts, streaming, checking results, writing shards, the
model card and the metadata file belong to :mod:`realignkit.execute`, once for every method.
Parameters are checked here, so the CLI, the sweep and ``tune`` all give the same one-line
error for a misspelt or out-of-range value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from realignkit.checkpoint.adapter import LoraFactors
from realignkit.errors import RealignError

# What a method may ask the executor for. Values are what the user gives on the CLI.
INPUTS: dict[str, str] = {
    "finetuned": "the fine-tuned model θ_F (--finetuned, or --base with --adapter)",
    "base": "the model the fine-tune started from θ_B (--base)",
    "safety_vector": "the safety vector v = θ_aligned − θ_unaligned (--safety-vector)",
    "aligned": "the safety-aligned model θ_A (--aligned)",
    "pretrained": "the pre-trained model the aligned one was aligned from (--pretrained)",
    "safety_finetune": "the aligned model fine-tuned on a small safety set (--safety-model)",
    "safety_data": "harmful prompts with safe responses (--safety-data)",
    "fisher": "diagonal Fisher scores of the aligned model (--fisher, from `realignkit fisher`)",
    "calibration": "downstream-task prompts (+ responses) the model is run on (--calibration)",
}
# What a layer method's model is run on, block after block: the data input it reads.
DATA_INPUTS = ("safety_data", "calibration")
KINDS = ("weight", "layer")


@dataclass(frozen=True)
class Param:
    """One declared hyper-parameter.

    ``low``/``high`` bound numbers (``open_low``/``open_high`` exclude the bound); ``choices``
    bound strings; ``rule`` replaces the range's wording in errors; ``flag`` is the CLI option
    (default ``--name`` with dashes). ``sweepable=False`` keeps it out of sweep grids (a seed
    the sweep sets itself, a device); ``cli=False`` keeps it off the method's command (a
    setting only recipes read). A ``multiple`` string parameter also takes comma lists.
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None
    rule: str | None = None
    flag: str | None = None
    sweepable: bool = True
    optional: bool = False  # None is a valid value (meaning "off" or "derive it")
    multiple: bool = False  # a list of values (a repeatable CLI option)
    cli: bool = True  # an option of the method's command
    panel: str | None = None  # the section of the command's help it is listed in
    # A strength: which way is safer ("higher" / "lower") and where `tune` searches.
    safer: str | None = None
    search: tuple[float, float] | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.rule:
            return self.rule
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            left = "(" if self.open_low else "["
            right = ")" if self.open_high else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return f"a {self.type.__name__}"

    def check(self, value: Any, label: str | None = None) -> Any:
        """``value`` coerced to the declared type, or a one-line error naming ``label``."""
        label = label or self.option
        if value is None:
            if self.optional or self.default is None:
                return None
            raise RealignError(f"{label} needs a value ({self.range_text()})")
        if self.multiple:
            items = [value] if isinstance(value, str) else list(value)
            if self.type is str:  # "q_proj,v_proj" is two values, as everywhere on the CLI
                items = [part.strip() for v in items for part in str(v).split(",")]
                items = [part for part in items if part]
            return tuple(self._one(v, label) for v in items)
        return self._one(value, label)

    def _one(self, value: Any, label: str) -> Any:
        wrong = RealignError(f"{label} must be {self.range_text()}, got {value!r}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            raise wrong
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise wrong
            try:
                number = self.type(value)
            except ValueError as err:
                raise wrong from err
            if self.type is int and float(value) != number:
                raise wrong
            if isinstance(number, float) and not math.isfinite(number):
                raise RealignError(f"{label} must be {self.range_text()}, got {value}")
            if self.low is not None and (
                number < self.low or (self.open_low and number == self.low)
            ):
                raise RealignError(f"{label} must be {self.range_text()}, got {value}")
            if self.high is not None and (
                number > self.high or (self.open_high and number == self.high)
            ):
                raise RealignError(f"{label} must be {self.range_text()}, got {value}")
            return number
        text = str(value)
        if self.choices and text not in self.choices:
            raise RealignError(f"unknown {label} {value!r}; {label} must be {self.range_text()}")
        return text


@dataclass
class WeightInputs:
    """The tensors of one weight a *weight* method sees (those it declared, else None).

    Tensors are in the checkpoint's orientation and stored dtype; ``transposed`` says the
    weight is stored ``(in, out)`` (GPT-2's Conv1D), for methods that act on a side.
    """

    name: str
    finetuned: torch.Tensor
    base: torch.Tensor | None = None
    safety_vector: torch.Tensor | None = None
    aligned: torch.Tensor | None = None
    pretrained: torch.Tensor | None = None
    safety_finetune: torch.Tensor | None = None
    fisher: torch.Tensor | None = None  # float32
    transposed: bool = False
    # an ``adapter_form`` method given a LoRA adapter: this weight's factors (the edit is the
    # new B factor, in B's shape)
    lora: LoraFactors | None = None
    # methods with a first pass (``scan``/``choose``): this weight's score and the verdict
    score: float | None = None
    chosen: bool | None = None


@dataclass
class LayerInputs:
    """One linear layer for a *layer* method, in ``(out, in)`` orientation, float32, on the
    compute device.

    ``hessian`` is ``(2/n) Σ x xᵀ`` of the layer's inputs on the method's data, as the model
    run by the executor (the aligned or the fine-tuned one, with earlier blocks already edited
    when the method is ``sequential``) saw them; None when this setting runs no model
    (``runs_model``). ``aligned`` is None for methods that do not read the aligned model.
    ``stored`` holds every declared input of this weight as a weight method sees it (the
    checkpoint's orientation and dtype, on the CPU), for methods whose results must equal
    stored values bit for bit. ``prepared`` is what the method's ``prepare`` pass returned.
    """

    name: str
    aligned: torch.Tensor | None
    finetuned: torch.Tensor
    hessian: torch.Tensor | None
    stored: WeightInputs | None = None
    device: torch.device | None = None
    prepared: Any = None


@dataclass
class Edit:
    """A method's answer for one weight: the new tensor (any float dtype: the executor casts it
    to the fine-tuned tensor's dtype once, then checks it) and statistics for the metadata."""

    tensor: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


EditWeight = Callable[[WeightInputs, Mapping[str, Any]], Edit]
EditLayer = Callable[[LayerInputs, Mapping[str, Any]], Edit]
# A weight method's working memory, in bytes per entry of the weight it edits, given its
# parameters and whether every input has the fine-tuned tensor's dtype: (scratch a worker
# thread keeps, grown to the largest weight; what one edit allocates and frees beyond its
# inputs and result). ``realignkit plan`` adds it to the tensors a streaming pass holds.
Memory = Callable[[Mapping[str, Any], bool], tuple[float, float]]


def default_memory(_params: Mapping[str, Any], _same_dtype: bool) -> tuple[float, float]:
    """Undeclared methods: planned as three fp32 copies of the weight, allocated per edit."""
    return 0.0, 12.0


def _always(_params: Mapping[str, Any]) -> Mapping[str, str]:
    return {}


class Declares:
    """Declared parameters looked up and checked by name: what a :class:`Method` shares with
    a hand-written recipe's declaration (:class:`realignkit.methods.registry.Declaration`),
    whose ``accepts`` are further names it takes unchecked."""

    name: str
    params: tuple[Param, ...]
    accepts: tuple[str, ...] = ()

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params] + list(self.accepts)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise RealignError(
            f"method {self.name!r} has no parameter {name!r}; "
            f"its parameters: {', '.join(self.param_names)}"
        )

    def checked(
        self, values: Mapping[str, Any], *, where: str | None = None, sweep: bool = False
    ) -> dict[str, Any]:
        """Every declared parameter's checked value (defaults filled in); a name neither
        declared nor accepted is a one-line error.

        ``where`` prefixes labels (``sweep config: resta.``) instead of CLI flags; ``sweep``
        refuses parameters a sweep may not vary.
        """
        known = {p.name: p for p in self.params}
        for key in values:
            if key not in known and key not in self.accepts:
                raise RealignError(
                    f"{where or ''}method {self.name!r} has no parameter {key!r}; "
                    f"its parameters: {', '.join(self.param_names)}"
                )
            if sweep and key in known and not known[key].sweepable:
                raise RealignError(
                    f"{where or ''}{self.name}.{key} cannot be swept; sweepable: "
                    + ", ".join(p.name for p in self.params if p.sweepable)
                )
        prefix = f"{where}{self.name}." if where is not None else None
        out = {}
        for p in self.params:
            label = f"{prefix}{p.name}" if prefix is not None else None
            out[p.name] = p.check(values.get(p.name, p.default), label)
        return out


@dataclass(frozen=True)
class Method(Declares):
    """A declared re-alignment method (see the module docstring).

    ``needs`` are the inputs it always reads; ``needs_when(params)`` maps the inputs that some
    settings add to the error shown when they are missing (RESTA reads the base only with
    DARE: ``{"base": "--dare needs --base, ..."}``). ``orientation`` asks the executor for
    each weight's orientation (``WeightInputs.transposed``). A *layer* method that is not
    ``sequential`` sees every layer's inputs as the unedited aligned model produces them.
    ``validate(params)`` checks rules that tie parameters together. ``card(params, stats)``
    gives the card's method name and its "Method" section. A weight method with ``scan`` gets
    a first streaming pass: ``scan`` scores every edited weight, ``choose(scores, params)``
    picks the names to edit (a global ranking), and the second pass sees ``score``/``chosen``.
    ``extra_meta(params, output)`` adds method-specific JSON files ``{filename: object}``.
    ``memory(params, same_dtype)`` declares a weight method's working memory per entry
    (:data:`Memory`), which ``realignkit plan`` uses; undeclared, it plans three fp32 copies.
    A weight method edits the decoder blocks' 2-D weights, plus the kinds of a declared
    ``include`` parameter (``targets="linears"``: their linear layers only).
    ``sweep_defaults`` are the settings the sweep's recipe starts from; ``sweep_grid`` is the
    grid a demo sweeps when nobody chose one; ``paper`` the setting its paper reports (the
    real-model demo and benchmark run every recipe that declares one there, so a new method
    joins them by declaring it).
    """

    name: str
    version: int
    summary: str
    kind: str
    params: tuple[Param, ...]
    needs: frozenset[str]
    edit_weight: EditWeight | None = None
    # inputs only some settings read (those ``needs_when`` may add): offered by the command too
    may_need: frozenset[str] = frozenset()
    edit_layer: EditLayer | None = None
    needs_when: Callable[[Mapping[str, Any]], Mapping[str, str]] = _always
    validate: Callable[[Mapping[str, Any]], None] | None = None
    card: Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[str, str]] | None = None
    scan: Callable[[WeightInputs, Mapping[str, Any]], float] | None = None
    choose: Callable[[Mapping[str, float], Mapping[str, Any]], set[str]] | None = None
    scan_when: Callable[[Mapping[str, Any]], bool] = lambda _params: True
    extra_meta: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None
    targets: str = "block_weights"  # or "linears": the decoder blocks' linear layers only
    # given --adapter, write an adapter (same keys and config, new B factors) instead of a model
    adapter_form: bool = False
    recipe: bool = True  # a registry recipe (the sweep, the demo)
    orientation: bool = False
    sequential: bool = True  # layer methods: later blocks see the edited earlier blocks
    help: str = ""  # the CLI command's help (default: the summary)
    cli: bool = True  # register a `realignkit NAME` command built from the declaration
    sweep_defaults: Mapping[str, Any] = field(default_factory=dict)
    sweep_grid: Mapping[str, Any] = field(default_factory=dict)  # the demo's default grid
    memory: Memory | None = None  # working memory per edited entry (``realignkit plan``)
    # a method that computes a weight in pieces of at most this many entries: its working
    # memory covers one piece, not the whole weight (None: the whole weight)
    memory_piece: int | None = None
    # -- layer methods: which model runs on which data, and what a first pass prepares --------
    runs: str = "aligned"  # the model run for the Hessians: "aligned" or "finetuned"
    runs_model: Callable[[Mapping[str, Any]], bool] = lambda _params: True
    data: str = "safety_data"  # the data input the model is run on (DATA_INPUTS)
    # (data path, tokenizer, params, vocabulary size) → token batches; default: safety rows
    batches: Callable[[Any, Any, Mapping[str, Any], int | None], list[dict]] | None = None
    # (token positions, (name, inputs) of the widest edited layer, params, data path) → None
    # or an error; default: refuse fewer positions than the widest layer has inputs
    check_tokens: Callable[[int, tuple[str, int], Mapping[str, Any], Any], None] | None = None
    # (a function streaming every edited layer's LayerInputs without Hessians, params) →
    # anything the edits need to see first (``LayerInputs.prepared``: a global ranking)
    prepare: Callable[[Callable[[], Any], Mapping[str, Any]], Any] | None = None
    prepare_when: Callable[[Mapping[str, Any]], bool] = lambda _params: True
    # -- every kind -----------------------------------------------------------------------------
    # values → values with a preset's defaults filled in (IRR's ``official``), before resolve
    presets: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    # (params, per-weight statistics) → totals for the card, the metadata and recipe info
    report: Callable[[Mapping[str, Any], Mapping[str, dict]], dict[str, Any]] | None = None
    # (a registry job, params, output folder) → inputs the registry derives for this method
    # (IRR: the Fisher scores of the aligned model on the job's harmful prompts)
    job_inputs: Callable[[Any, Mapping[str, Any], Any], dict[str, Any]] | None = None
    paper: Mapping[str, Any] = field(default_factory=dict)  # the paper's setting (the demos)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method kind must be one of {KINDS}, got {self.kind!r}")
        unknown = (set(self.needs) | set(self.may_need)) - set(INPUTS)
        if unknown:
            raise ValueError(f"method {self.name!r} needs unknown inputs {sorted(unknown)}")
        if (self.edit_weight is None) == (self.edit_layer is None):
            raise ValueError("a method has exactly one of edit_weight and edit_layer")
        if self.runs not in ("aligned", "finetuned") or self.data not in DATA_INPUTS:
            raise ValueError(f"method {self.name!r}: runs {self.runs!r} on {self.data!r}?")
        if self.paper:
            self.resolve(self.paper, where="paper setting: ")

    def resolve(
        self, values: Mapping[str, Any], *, where: str | None = None, sweep: bool = False
    ) -> dict[str, Any]:
        """Every parameter's checked value (defaults filled in, a preset's first), or a
        one-line error (see :meth:`Declares.checked`)."""
        if self.presets is not None:
            values = self.presets(values)
        out = self.checked(values, where=where, sweep=sweep)
        if self.validate is not None:
            self.validate(out)
        return out

    def inputs_needed(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(self.needs) | frozenset(self.needs_when(params))


def declared_params(params: Sequence[Param]) -> dict[str, Param]:
    """Parameters by name (a helper for method modules)."""
    return {p.name: p for p in params}


# Parameters of every *layer* method: which safety data the executor runs, and how.
DATA_PARAMS: tuple[Param, ...] = (
    Param("num_samples", int, 128, "Rows of --safety-data used (a seeded sample).", low=1),
    Param("max_length", int, 512, "Tokens per row, at most.", low=2),
    Param("batch_size", int, 8, "Rows per forward pass.", low=1, sweepable=False),
    Param(
        "damping",
        float,
        0.01,
        "Fraction of mean(diag H) added to the Hessian's diagonal before inverting it.",
        low=0.0,
    ),
    Param("seed", int, 0, "Seed of the data sample.", sweepable=False),
)
