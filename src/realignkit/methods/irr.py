"""IRR (Wu et al. 2024, arXiv 2412.11041): identify, remove and recalibrate unsafe delta parameters.

For every edited weight, with the fine-tuning delta ``δ = θ_F − θ_B``, the safety vector ``v``
and the aligned model's Fisher scores ``F``::

    1. identify     candidates = {i : δ_i · v_i < 0}              (sign conflict with safety)
                    unsafe     = top R of the candidates by F_i     (per 128-column block,
                                                                     per matrix, or global)
    2. remove       δ_i ← 0 for unsafe i                            (back to the base weight)
    3. recalibrate  move the retained δ so each layer's output on calibration data changes as
                    little as possible (OBS with H = (2/n) Σ x xᵀ, the SparseGPT sweep),
                    block after block, each block seeing the already edited blocks' outputs

R = 1 removes every sign-conflicting entry. The official code exposes R as SparseGPT's
``--sparsity s``, the fraction of candidates *kept*: ``--sparsity s`` equals ``--rho 1 − s``.

Ablations: ``mask="random"`` (same count per unit, random choice), ``mask="magnitude"``
(largest ``|δ|``), ``use_sign=False`` (every entry is a candidate: Fisher alone), ``rho=1``,
``recalibrate=False``.

The official code's behaviour (``IRRSettings.official()``, ``realignkit irr --official``)
differs in seven details, each a setting of its own (see :data:`OFFICIAL`): the mask of each
128-column block is chosen inside the sweep on the delta as updated by the blocks to its left
(``mask_selection="adaptive"``); ties at the cut remove the later entry; ``⌊n·(1 − R)⌋`` of
``n`` candidates are kept; zeros count as sign conflicts; columns of dead inputs get δ = 0;
the Hessian sees every position of calibration sequences left-padded with EOS; and the
calibration text is Llama-2's default system prompt, ``"{instruction}\n{input}"``, the
response and EOS, from the first N rows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from realignkit.calib.blocks import LinearLayer, decoder_linears, select_modules
from realignkit.calib.fisher import FisherScores
from realignkit.checkpoint import CheckpointWriter, FinetunedWeights, check_same_layout, model_card
from realignkit.errors import RealignError
from realignkit.methods.base import Param
from realignkit.methods.registry import Realigned, RealignJob, recipe
from realignkit.methods.safety_vector import SafetyVector
from realignkit.ops.masks import (
    BUDGETS,
    COUNT_ROUNDINGS,
    MASK_KINDS,
    TIES,
    GlobalCutoff,
    check_choice,
    check_fraction,
    global_cutoff,
    key_histogram,
    ranking_scores,
    removal_count,
    sign_conflict,
    top_fraction_mask,
)
from realignkit.ops.obs import BlockChooser, obs_recalibrate, obs_recalibrate_adaptive, output_error

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
META_FILE = "irr.json"
MASK_SELECTIONS = ("fixed", "adaptive")
DEAD_COLUMNS = ("keep", "zero")
HESSIAN_PADDINGS = ("real-tokens", "left-eos")
CALIBRATION_FORMATS = ("chat", "official")
CALIBRATION_ROWS = ("random", "first")

# What the official IRR code does, as settings (each one also a CLI option).
OFFICIAL: dict[str, Any] = {
    "mask_selection": "adaptive",
    "ties": "later",
    "count_rounding": "keep-floor",
    "zero_is_conflict": True,
    "dead_columns": "zero",
    "hessian_padding": "left-eos",
    "calibration_format": "official",
    "calibration_rows": "first",
    "block_size": 128,
    "max_length": 512,
}
# The official driver's --true-sequential flag edits only these (the LoRA targets).
TRUE_SEQUENTIAL_MODULES = ["q_proj", "v_proj"]


@dataclass
class IRRSettings:
    """Every knob of IRR, with the paper's defaults."""

    rho: float = 0.5  # R: fraction of sign-conflicting entries removed (official s = 1 − R)
    budget: str = "block"  # where the top-R ranking happens: block | matrix | global
    mask: str = "fisher"  # score that ranks candidates: fisher | magnitude | random
    use_sign: bool = True  # only sign-conflicting entries are candidates
    recalibrate: bool = True
    damping: float = 0.01  # fraction of mean(diag H) added to the diagonal
    block_size: int = 128  # columns per ranking block and per lazy OBS batch
    refine_steps: int = 0  # conjugate-gradient steps after the sweep (0: as the paper)
    modules: list[str] | None = None  # e.g. ["q_proj", "v_proj"]; default: all block linears
    num_samples: int = 128
    max_length: int = 512
    batch_size: int = 8
    min_calibration_tokens: int | None = None  # refuse fewer (default: warn below widest input)
    prompt_column: str = "prompt"
    response_column: str | None = None  # default: "response" when the data has it
    seed: int = 0  # random masks and calibration subsampling
    device: str | None = None
    dtype: torch.dtype | None = None  # precision of the calibration forward passes
    # How the mask is chosen: once on the original δ (fixed), or per block inside the sweep on
    # the δ the earlier blocks' updates left (adaptive, the official code).
    mask_selection: str = "fixed"
    ties: str = "earlier"  # which tied entry at the cut is removed: earlier | later
    count_rounding: str = "half-up"  # removed round(R·n) | keep-floor: kept ⌊(1 − R)·n⌋
    zero_is_conflict: bool = False  # sign(δ) ≠ sign(v) instead of δ·v < 0
    dead_columns: str = "keep"  # inputs with H_jj = 0: keep the retained δ | zero it
    hessian_padding: str = "real-tokens"  # real-tokens | left-eos (pads counted, attended)
    calibration_format: str = "chat"  # chat | official (Llama-2 system prompt, EOS ending)
    calibration_rows: str = "random"  # random (seeded subsample) | first N rows
    text_column: str | None = None  # raw text rows, tokenised as they are
    ids_column: str = "input_ids"  # rows with this column are token ids, used as they are
    input_column: str = "input"  # official format: user message "{prompt}\n{input}"

    @classmethod
    def official(cls, **overrides: Any) -> IRRSettings:
        """The official code's behaviour (:data:`OFFICIAL`), with ``overrides`` on top."""
        return cls(**{**OFFICIAL, **overrides})

    @property
    def is_official(self) -> bool:
        return all(getattr(self, key) == value for key, value in OFFICIAL.items())

    def check(self) -> None:
        check_fraction(self.rho)
        check_choice(self.mask_selection, MASK_SELECTIONS, "--mask-selection")
        check_choice(self.ties, TIES, "--ties")
        check_choice(self.count_rounding, COUNT_ROUNDINGS, "--count-rounding")
        check_choice(self.dead_columns, DEAD_COLUMNS, "--dead-columns")
        check_choice(self.hessian_padding, HESSIAN_PADDINGS, "--hessian-padding")
        check_choice(self.calibration_format, CALIBRATION_FORMATS, "--calibration-format")
        check_choice(self.calibration_rows, CALIBRATION_ROWS, "--calibration-rows")
        if self.mask_selection == "adaptive" and self.budget != "block":
            raise RealignError(
                f"--mask-selection adaptive chooses the mask block by block: it needs "
                f"--budget block, not {self.budget!r}"
            )
        if self.ties == "later" and self.budget == "global":
            raise RealignError("--ties later is defined for --budget block and matrix only")
        if self.dead_columns == "zero" and self.budget == "global":
            # The global ranking is computed before any Hessian says which inputs are dead.
            raise RealignError("--dead-columns zero is defined for --budget block and matrix only")
        if self.min_calibration_tokens is not None and self.min_calibration_tokens < 0:
            raise RealignError("--min-calibration-tokens must be >= 0")
        if self.budget not in BUDGETS:
            raise RealignError(f"unknown --budget {self.budget!r}; use {', '.join(BUDGETS)}")
        if self.mask not in MASK_KINDS:
            raise RealignError(f"unknown --mask {self.mask!r}; use {', '.join(MASK_KINDS)}")
        if not self.damping >= 0:
            raise RealignError(f"--damping must be >= 0, got {self.damping}")
        if self.refine_steps < 0:
            raise RealignError(f"--refine-steps must be >= 0, got {self.refine_steps}")
        if self.block_size < 1 or self.num_samples < 1 or self.max_length < 2:
            raise RealignError("--block-size, --num-samples and --max-length must be positive")


@dataclass
class LayerStats:
    """What IRR did to one weight (counts of entries; errors are mean squared output change
    per calibration token, relative to θ_F, with and without recalibration)."""

    name: str
    entries: int
    candidates: int
    removed: int
    error_removed: float | None = None
    error_recalibrated: float | None = None


@dataclass
class IRRResult:
    """Where the re-aligned model went and the per-layer statistics."""

    path: Path
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(s.removed for s in self.layers)


@dataclass
class Target:
    """One edited weight: its layer (for orientation) and its names in the input folders."""

    layer: LinearLayer
    name: str  # tensor name in the fine-tuned checkpoint (and the safety vector)
    fisher_name: str | None = None


# --- the three steps, on one weight in (out, in) orientation ---------------------------------


def candidates_of(
    delta: torch.Tensor, safety: torch.Tensor | None, settings: IRRSettings
) -> torch.Tensor:
    """The entries that may be removed: sign conflicts with v (all entries with ``--no-sign``).

    ``safety=None`` is a low-rank safety vector that does not touch this weight (v = 0): no
    conflicts, or, when zeros count as conflicts, every non-zero δ.
    """
    if not settings.use_sign:
        return torch.ones_like(delta, dtype=torch.bool)
    if safety is None:
        if settings.zero_is_conflict:
            return delta != 0
        return torch.zeros_like(delta, dtype=torch.bool)
    return sign_conflict(delta, safety, zero_is_conflict=settings.zero_is_conflict)


def identify(
    delta: torch.Tensor,
    safety: torch.Tensor | None,
    scores: torch.Tensor,
    settings: IRRSettings,
    cutoff: GlobalCutoff | None = None,
) -> tuple[torch.Tensor, int]:
    """The unsafe entries of one weight, and how many candidates there were."""
    candidates = candidates_of(delta, safety, settings)
    if settings.budget == "global":
        assert cutoff is not None
        return cutoff.apply(scores, candidates), int(candidates.sum())
    mask = top_fraction_mask(
        scores,
        candidates,
        settings.rho,
        budget=settings.budget,
        block_size=settings.block_size,
        ties=settings.ties,
        rounding=settings.count_rounding,
    )
    return mask, int(candidates.sum())


def remove(delta: torch.Tensor, unsafe: torch.Tensor) -> torch.Tensor:
    """Unsafe entries go back to the base model: their delta becomes 0."""
    return delta.masked_fill(unsafe, 0.0)


def recalibrate(
    delta: torch.Tensor, unsafe: torch.Tensor, hessian: torch.Tensor, settings: IRRSettings
) -> torch.Tensor:
    """Remove the unsafe entries and let the retained ones compensate (OBS / SparseGPT)."""
    return obs_recalibrate(
        delta,
        hessian,
        unsafe,
        damping=settings.damping,
        block_size=settings.block_size,
        refine_steps=settings.refine_steps,
        zero_dead_columns=settings.dead_columns == "zero",
    )


def block_chooser(
    safety: torch.Tensor | None,
    scores: torch.Tensor,
    settings: IRRSettings,
    candidates_seen: list[int],
) -> BlockChooser:
    """Identification as a step of the sweep: each block's removals, chosen on the block as
    the earlier blocks' OBS updates left it (sign conflicts of the updated δ with v, the top R
    by score within the block). ``--mask magnitude`` ranks the updated ``|δ|``. The candidates
    found per block are added to ``candidates_seen[0]``."""

    def choose(start: int, end: int, block: torch.Tensor) -> torch.Tensor:
        local_safety = None if safety is None else safety[:, start:end]
        candidates = candidates_of(block, local_safety, settings)
        local_scores = block.abs() if settings.mask == "magnitude" else scores[:, start:end]
        candidates_seen[0] += int(candidates.sum())
        return top_fraction_mask(
            local_scores,
            candidates,
            settings.rho,
            budget="matrix",  # the block is the ranking unit; row-major order inside it
            ties=settings.ties,
            rounding=settings.count_rounding,
        )

    return choose


def recalibrate_adaptive(
    delta: torch.Tensor,
    safety: torch.Tensor | None,
    scores: torch.Tensor,
    hessian: torch.Tensor,
    settings: IRRSettings,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Identify, remove and recalibrate in one sweep; the new δ, the removal mask and the
    number of candidates."""
    seen = [0]
    kept, unsafe = obs_recalibrate_adaptive(
        delta,
        hessian,
        block_chooser(safety, scores, settings, seen),
        damping=settings.damping,
        block_size=settings.block_size,
        refine_steps=settings.refine_steps,
        zero_dead_columns=settings.dead_columns == "zero",
    )
    return kept, unsafe, seen[0]


# --- reading the inputs of one weight ---------------------------------------------------------


class _Inputs:
    """θ_F, θ_B, v and scores of one target, in (out, in) orientation, on ``device``."""

    def __init__(
        self,
        weights: FinetunedWeights,
        safety_vector: SafetyVector,
        fisher: FisherScores | None,
        settings: IRRSettings,
    ) -> None:
        self.weights, self.sv, self.fisher, self.settings = weights, safety_vector, fisher, settings

    def load(self, target: Target, device: torch.device) -> dict[str, torch.Tensor | None]:
        layer, name = target.layer, target.name
        theta_f = self.weights.get(name)
        theta_b = self.weights.get_base(name)
        delta = layer.to_kernel(theta_f.float() - theta_b.float()).to(device)
        safety = (
            layer.to_kernel(self.sv.get(name)).to(device)
            if name in self.sv
            else None  # a low-rank safety vector that does not touch this weight: v = 0
        )
        fisher = None
        if self.fisher is not None and target.fisher_name is not None:
            fisher = layer.to_kernel(self.fisher.get(target.fisher_name)).to(device)
        scores = ranking_scores(
            self.settings.mask, delta=delta, fisher=fisher, seed=self.settings.seed, name=name
        )
        return {
            "theta_f": theta_f,
            "theta_b": theta_b,
            "delta": delta,
            "safety": safety,
            "scores": scores,
        }


# --- the method --------------------------------------------------------------------------------


def _skeleton(weights: FinetunedWeights) -> torch.nn.Module:
    """The model's modules without weights (meta device): enough to find blocks and layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = weights.support_dirs[0]
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise RealignError(f"cannot read the model config in {str(folder)!r}: {err}") from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _checkpoint_name(param_name: str, available: Any, base_prefix: str) -> str | None:
    """The checkpoint's name of a model parameter (some checkpoints omit the base prefix)."""
    if param_name in available:
        return param_name
    prefix = f"{base_prefix}." if base_prefix else ""
    if prefix and param_name.startswith(prefix) and param_name[len(prefix) :] in available:
        return param_name[len(prefix) :]
    return None


def plan_targets(
    model: torch.nn.Module,
    weights: FinetunedWeights,
    safety_vector: SafetyVector,
    fisher: FisherScores | None,
    settings: IRRSettings,
) -> list[Target]:
    """The weights IRR edits, with every input checked against the fine-tuned model first."""
    base_prefix = getattr(model, "base_model_prefix", "")
    layers = select_modules(decoder_linears(model), settings.modules)
    targets = []
    for layer in layers:
        name = _checkpoint_name(layer.weight_name, weights, base_prefix)
        if name is None:
            raise RealignError(
                f"weight {layer.weight_name!r} of the model is missing from the fine-tuned "
                "checkpoint"
            )
        targets.append(Target(layer, name))
    by_name = {t.name: t for t in targets}
    if fisher is not None:
        for fname in fisher.names:
            name = _checkpoint_name(fname, weights, base_prefix)
            if name is None:
                raise RealignError(
                    f"the Fisher scores hold tensor {fname!r}, which the fine-tuned model does "
                    f"not have: they were computed for another model ({fisher.architecture})"
                )
            if tuple(fisher.shape(fname)) != tuple(weights.shape(name)):
                raise RealignError(
                    f"tensor {fname!r} has shape {tuple(fisher.shape(fname))} in the Fisher "
                    f"scores but {tuple(weights.shape(name))} in the fine-tuned model"
                )
            if name in by_name:
                by_name[name].fisher_name = fname
        if settings.mask == "fisher":
            missing = [t for t in targets if t.fisher_name is None]
            if settings.modules and missing:
                raise RealignError(
                    f"no Fisher scores for {missing[0].name!r}; recompute them with "
                    "`realignkit fisher --modules ...` or choose other --modules"
                )
            targets = [t for t in targets if t.fisher_name is not None]
    if not targets:
        raise RealignError("no weight to edit: the Fisher scores cover none of the chosen layers")
    for target in targets:
        name = target.name
        if name in safety_vector:
            if tuple(safety_vector.shape(name)) != tuple(weights.shape(name)):
                raise RealignError(
                    f"tensor {name!r} has shape {tuple(safety_vector.shape(name))} in the safety "
                    f"vector but {tuple(weights.shape(name))} in the fine-tuned model"
                )
        elif settings.use_sign and not safety_vector.is_lowrank:
            raise RealignError(
                f"tensor {name!r} is missing from the safety vector {safety_vector.dir}: "
                "it was made for another model"
            )
        base = weights.base
        assert base is not None
        if name not in base or tuple(base.shape(name)) != tuple(weights.shape(name)):
            raise RealignError(f"tensor {name!r} of the fine-tuned model does not match --base")
    return targets


def calibration_examples(
    path: PathLike, tokenizer: Any, settings: IRRSettings, *, vocab_size: int | None = None
) -> list[Any]:
    """Calibration rows as token ids, from one of three kinds of rows:

    - ``settings.text_column`` given: raw text, tokenised as it is;
    - rows with ``settings.ids_column`` (``input_ids``): token ids used as they are (checked
      against ``vocab_size``), so a run can use exactly the tokens a fine-tune saw;
    - otherwise prompt (+ response) rows in ``settings.calibration_format``: ``chat`` (the
      tokenizer's chat template) or ``official`` (Llama-2's default system prompt, user message
      ``"{prompt}\n{input}"``, then the response's tokens and EOS).

    ``settings.calibration_rows``: a seeded random subsample of ``num_samples`` rows, or the
    first ``num_samples``. Every row is cut to ``max_length`` tokens; empty ones are dropped.
    """
    from realignkit.calib.text import encode_chat, encode_ids, encode_text
    from realignkit.data import read_rows, require_columns, subsample

    rows = read_rows(path)
    if settings.calibration_rows == "first":
        rows = rows[: settings.num_samples]
    else:
        rows = subsample(rows, settings.num_samples, settings.seed)
    limit = settings.max_length
    if settings.text_column is not None:
        require_columns(rows, [settings.text_column], str(path))
        encoded = [
            encode_text(tokenizer, str(r[settings.text_column]), max_length=limit) for r in rows
        ]
    elif settings.ids_column in rows[0]:
        require_columns(rows, [settings.ids_column], str(path))
        encoded = [
            encode_ids(
                r[settings.ids_column],
                max_length=limit,
                vocab_size=vocab_size,
                where=f"{path}: row {i + 1}",
            )
            for i, r in enumerate(rows)
        ]
    else:
        response_column = settings.response_column
        if response_column is None and "response" in rows[0]:
            response_column = "response"
        require_columns(
            rows,
            [settings.prompt_column] + ([response_column] if response_column else []),
            str(path),
        )
        official = settings.calibration_format == "official"
        system_prompt = None
        if official:
            from realignkit.eval.generate import LLAMA2_SYSTEM_PROMPT as system_prompt

        def user_message(row: dict) -> str:
            prompt = str(row[settings.prompt_column])
            # The official template joins instruction and input with a newline, always.
            return f"{prompt}\n{row.get(settings.input_column) or ''}" if official else prompt

        encoded = [
            encode_chat(
                tokenizer,
                user_message(row),
                str(row[response_column]) if response_column else None,
                max_length=limit,
                system_prompt=system_prompt,
                response_end="eos" if official else "template",
            )
            for row in rows
        ]
    return [e for e in encoded if e.ids]


def calibration_batches(examples: list[Any], tokenizer: Any, settings: IRRSettings) -> list[dict]:
    """Token batches for the Hessians: right-padded with padding masked out (real tokens
    only), or ``left-eos``: left-padded with EOS to ``max_length``, every position counted and
    attended (a forward pass on the input ids alone, as the official code's loader feeds it)."""
    from realignkit.calib.text import make_batches, pad_id_of

    if settings.hessian_padding == "left-eos":
        if tokenizer.eos_token_id is None:
            raise RealignError("--hessian-padding left-eos needs a tokenizer with an EOS token")
        return make_batches(
            examples,
            settings.batch_size,
            int(tokenizer.eos_token_id),
            left=True,
            width=settings.max_length,
            attend_padding=True,
        )
    return make_batches(examples, settings.batch_size, pad_id_of(tokenizer))


def check_calibration_size(
    positions: int, targets: list[Target], settings: IRRSettings, source: PathLike
) -> None:
    """Refuse no tokens (or fewer than an explicit ``min_calibration_tokens``); warn, with the
    numbers, when fewer positions than a layer's inputs leave its Hessian rank-deficient:
    damping keeps it invertible and the sweep runs (as the official code does)."""
    needed = settings.min_calibration_tokens
    if positions == 0 or (needed is not None and positions < needed):
        raise RealignError(
            f"calibration data {str(source)!r} give {positions} tokens, fewer than "
            f"--min-calibration-tokens {needed or 1}: use more --num-samples or a longer "
            "--max-length"
        )
    widest = max(targets, key=lambda t: t.layer.in_features)
    if positions < widest.layer.in_features:
        log.warning(
            "calibration data %s give %d token positions, fewer than the %d inputs of %s: "
            "its Hessian has rank at most %d of %d; damping (%g x mean diag H) keeps it "
            "invertible, but the compensation is under-determined (more --num-samples or a "
            "longer --max-length help)",
            source,
            positions,
            widest.layer.in_features,
            widest.name,
            positions,
            widest.layer.in_features,
            settings.damping,
        )


def _global_cutoff(
    targets: list[Target], inputs: _Inputs, settings: IRRSettings, device: torch.device
) -> GlobalCutoff:
    """Two streaming passes (coarse then fine histogram) find the model-wide top-R cutoff."""
    from tqdm.auto import tqdm

    def candidates_and_scores(target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = inputs.load(target, device)
        return candidates_of(loaded["delta"], loaded["safety"], settings), loaded["scores"]

    high = torch.zeros(1 << 16, dtype=torch.long)
    total = 0
    for target in tqdm(targets, desc="global ranking (1/2)"):
        cand, scores = candidates_and_scores(target)
        high += key_histogram(scores, cand)
        total += int(cand.sum())

    def low_histogram(high_bin: int) -> torch.Tensor:
        low = torch.zeros(1 << 16, dtype=torch.long)
        for target in tqdm(targets, desc="global ranking (2/2)"):
            cand, scores = candidates_and_scores(target)
            low += key_histogram(scores, cand, high_bin=high_bin)
        return low

    removals = removal_count(settings.rho, total, rounding=settings.count_rounding)
    return global_cutoff(high, low_histogram, removals)


def _load_running_model(weights: FinetunedWeights, settings: IRRSettings, device: torch.device):
    """θ_F as a runnable model on the CPU (blocks visit ``device`` one at a time)."""
    from realignkit.modeling import default_dtype, load_causal_lm

    dtype = settings.dtype or default_dtype(device)
    model = load_causal_lm(
        weights.support_dirs[0], dtype=dtype, device="cpu", allow_pickle=weights.allow_pickle
    )
    if weights.adapter is not None:
        # The main folder is the base: put θ_F = θ_B + scale·B·A into every adapted tensor.
        base_prefix = getattr(model, "base_model_prefix", "")
        params = dict(model.named_parameters())
        adapted = list(weights.adapter.target_weights()) + list(weights.adapter.full_tensors())
        for param_name, param in params.items():
            name = _checkpoint_name(param_name, set(adapted), base_prefix)
            if name is not None:
                with torch.no_grad():
                    param.copy_(weights.get(name).to(param.dtype))
    return model


def irr(
    weights: FinetunedWeights,
    safety_vector: SafetyVector,
    out: PathLike,
    *,
    fisher: FisherScores | None = None,
    calibration: PathLike | None = None,
    settings: IRRSettings | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    progress: bool = True,
) -> IRRResult:
    """Write the IRR re-aligned model to ``out`` (a normal model folder with a model card)."""
    from realignkit.modeling import default_device

    settings = settings or IRRSettings()
    settings.check()
    if weights.base is None:
        raise RealignError("IRR needs --base, the model the fine-tune started from")
    if settings.mask == "fisher" and fisher is None:
        raise RealignError("--mask fisher needs --fisher (from `realignkit fisher`)")
    if settings.recalibrate and calibration is None:
        raise RealignError("recalibration needs --calibration data (or pass --no-recalibrate)")
    device = torch.device(settings.device) if settings.device else default_device()
    # Everything is checked before anything is written: a mismatch leaves no output.
    check_same_layout(safety_vector, weights)
    skeleton = _skeleton(weights)
    targets = plan_targets(skeleton, weights, safety_vector, fisher, settings)
    tokenizer = examples = batches = None
    if settings.recalibrate:
        from realignkit.modeling import load_tokenizer

        adapter_dir = weights.adapter.dir if weights.adapter is not None else None
        tokenizer = load_tokenizer(
            weights.support_dirs[0], adapter=adapter_dir, padding_side="right"
        )
        vocab = getattr(skeleton.config, "vocab_size", None)
        examples = calibration_examples(calibration, tokenizer, settings, vocab_size=vocab)  # type: ignore[arg-type]
        batches = calibration_batches(examples, tokenizer, settings)
        positions = sum(int(b["attention_mask"].sum()) for b in batches)
        check_calibration_size(positions, targets, settings, calibration)  # type: ignore[arg-type]
    inputs = _Inputs(weights, safety_vector, fisher, settings)
    cutoff = None
    if settings.budget == "global":
        cutoff = _global_cutoff(targets, inputs, settings, device)
    by_layer = {t.layer.name: t for t in targets}
    result = IRRResult(Path(out))
    writer = CheckpointWriter(out, overwrite=overwrite, max_shard_size=max_shard_size)

    def edit(target: Target, hessian: torch.Tensor | None) -> torch.Tensor:
        """Identify → remove → recalibrate one weight; returns the new (out, in) weight."""
        loaded = inputs.load(target, device)
        delta = loaded["delta"]
        start = delta  # what identification and the sweep start from
        if hessian is not None and settings.dead_columns == "zero":
            # Inputs the calibration data never activate: δ = 0 there before anything is chosen.
            start = delta.masked_fill(torch.diagonal(hessian).eq(0).unsqueeze(0), 0.0)
        adaptive = hessian is not None and settings.mask_selection == "adaptive"
        if adaptive:
            kept, unsafe, candidates = recalibrate_adaptive(
                start, loaded["safety"], loaded["scores"], hessian, settings
            )
        else:
            unsafe, candidates = identify(
                start, loaded["safety"], loaded["scores"], settings, cutoff
            )
        stats = LayerStats(target.name, delta.numel(), candidates, int(unsafe.sum()))
        theta_f, theta_b = loaded["theta_f"], loaded["theta_b"]
        layer = target.layer
        unsafe_stored = layer.from_kernel(unsafe).cpu()
        if hessian is None:
            # Remove only, done in the stored dtype so that unsafe entries are θ_B bit for bit
            # and all others θ_F bit for bit (θ_B + δ would round).
            new = torch.where(unsafe_stored, theta_b, theta_f)
        else:
            if not adaptive:
                kept = recalibrate(start, unsafe, hessian, settings)
            stats.error_removed = output_error(remove(delta, unsafe) - delta, hessian)
            stats.error_recalibrated = output_error(kept - delta, hessian)
            recal = (theta_b.float() + layer.from_kernel(kept).cpu()).to(theta_f.dtype)
            new = torch.where(unsafe_stored, theta_b, recal)
        # θ_B and θ_F may differ in dtype (torch.where promotes): store θ_F's dtype.
        new = new.to(weights.dtype(target.name))
        writer.add(target.name, new)
        result.layers.append(stats)
        return layer.to_kernel(new)

    with writer:
        if settings.recalibrate:
            from realignkit.calib.hessian import edit_blockwise

            model = _load_running_model(weights, settings, device)

            def edit_block(index: int, layers: list[LinearLayer], hessians: dict) -> None:
                for layer in layers:
                    target = by_layer[layer.name]
                    new = edit(Target(layer, target.name, target.fisher_name), hessians[layer.name])
                    layer.set_weight(new)

            edit_blockwise(
                model,
                batches,  # type: ignore[arg-type]
                edit_block,
                device=device,
                select=lambda layer: layer.name in by_layer,
                progress=progress,
            )
            del model
        else:
            from tqdm.auto import tqdm

            for target in tqdm(targets, desc="IRR (no recalibration)", disable=not progress):
                edit(target, None)
        edited = {t.name for t in targets}
        for name in weights.names:
            if name not in edited:
                writer.add(name, weights.get(name))
        writer.copy_support_files(*weights.support_dirs)
        _write_card(writer, result, weights, safety_vector, fisher, calibration, settings, batches)
    return result


def _write_card(
    writer: CheckpointWriter,
    result: IRRResult,
    weights: FinetunedWeights,
    safety_vector: SafetyVector,
    fisher: FisherScores | None,
    calibration: PathLike | None,
    settings: IRRSettings,
    batches: list[dict] | None,
) -> None:
    entries = sum(s.entries for s in result.layers)
    candidates = sum(s.candidates for s in result.layers)
    params: dict[str, Any] = {
        "rho (R)": settings.rho,
        "official --sparsity equivalent (1 - R)": round(1 - settings.rho, 6),
        "budget": settings.budget,
        "mask": settings.mask,
        "sign conflict required": settings.use_sign,
        "recalibrate": settings.recalibrate,
        "official preset (all of --official)": settings.is_official,
        "mask selection": settings.mask_selection if settings.recalibrate else "fixed",
        "ties at the cut": f"the {settings.ties} entry is removed",
        "count rounding": settings.count_rounding,
        "zeros count as sign conflicts": settings.zero_is_conflict,
        "seed": settings.seed,
        "layers edited": len(result.layers),
        "entries removed": f"{result.removed} of {entries} "
        f"({100 * result.removed / max(entries, 1):.3f}%); {candidates} candidates",
    }
    if settings.recalibrate:
        params.update(
            {
                "damping (of mean diag H)": settings.damping,
                "lazy batch / ranking block (columns)": settings.block_size,
                "refinement steps after the sweep": settings.refine_steps,
                "dead input columns": settings.dead_columns,
                "Hessian padding": settings.hessian_padding,
                "calibration format": settings.calibration_format
                if settings.text_column is None
                else f"raw text column {settings.text_column!r}",
                "calibration rows": settings.calibration_rows,
                "calibration samples": sum(len(b["input_ids"]) for b in batches or []),
                "calibration token positions in H": sum(
                    int(b["attention_mask"].sum()) for b in batches or []
                ),
                "max length": settings.max_length,
            }
        )
    elif settings.budget == "block":
        params["ranking block (columns)"] = settings.block_size
    lines = [
        "## Method",
        "",
        "IRR: entries of δ = θ_F − θ_B whose sign conflicts with the safety vector are ranked "
        "by the chosen score inside each budget unit; the top R are reset to θ_B"
        + (
            "; the retained delta of each linear layer is then recalibrated with Optimal Brain "
            "Surgeon updates (SparseGPT sweep, H = (2/n) Σ x xᵀ over "
            + (
                "every position of the EOS-left-padded calibration sequences"
                if settings.hessian_padding == "left-eos"
                else "non-padding calibration tokens"
            )
            + ", layer inputs from the already edited blocks)"
            + (
                f"; each {settings.block_size}-column block's mask is chosen inside the sweep, "
                "on the delta as the blocks to its left left it."
                if settings.mask_selection == "adaptive"
                else "."
            )
            if settings.recalibrate
            else "; no recalibration."
        ),
        "The official code's `--sparsity s` corresponds to R = 1 − s.",
        "",
        "## Entries removed per layer",
        "",
        "| tensor | entries | sign conflicts | removed | removed % | output error removed only "
        "| output error recalibrated |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result.layers:
        err_r = "-" if s.error_removed is None else f"{s.error_removed:.4g}"
        err_c = "-" if s.error_recalibrated is None else f"{s.error_recalibrated:.4g}"
        lines.append(
            f"| {s.name} | {s.entries} | {s.candidates} | {s.removed} | "
            f"{100 * s.removed / max(s.entries, 1):.3f} | {err_r} | {err_c} |"
        )
    lines += [
        "",
        "Output errors are mean squared changes of the layer output per calibration token "
        "relative to the fine-tuned layer, on the inputs the layer saw during recalibration.",
    ]
    inputs: dict[str, Any] = dict(weights.describe())
    if weights.full is not None and weights.base is not None:
        inputs["base"] = str(weights.base.dir)
    inputs["safety_vector"] = str(safety_vector.dir)
    if fisher is not None:
        inputs["fisher"] = str(fisher.dir)
    if calibration is not None and settings.recalibrate:
        inputs["calibration"] = str(calibration)
    writer.write_card(
        model_card(
            method="IRR",
            summary="A fine-tuned model re-aligned for safety by IRR: unsafe delta parameters "
            "identified, removed and the rest recalibrated.",
            inputs=inputs,
            params=params,
            body="\n".join(lines),
            base_model=inputs.get("finetuned") or inputs.get("base"),
        )
    )
    settings_json = {k: v for k, v in asdict(settings).items() if k != "dtype"}
    settings_json["dtype"] = str(settings.dtype) if settings.dtype else None
    writer.write_json(
        META_FILE,
        {
            "method": "irr",
            "inputs": inputs,
            "settings": settings_json,
            "layers": [asdict(s) for s in result.layers],
        },
    )


# --- registry recipe ---------------------------------------------------------------------------


@recipe(
    "irr",
    params=(
        Param(
            "rho",
            float,
            0.5,
            "R: the fraction of sign-conflicting delta entries removed.",
            low=0.0,
            high=1.0,
            safer="higher",
            search=(0.0, 1.0),
        ),
        Param("num_samples", int, 128, "Rows of the Fisher / calibration data used.", low=1),
        Param("max_length", int, 512, "Tokens per row, at most.", low=2),
        # typed, so `tune --set recalibrate=false` reaches the recipe as False, not "false"
        Param("budget", str, "block", "Where the top-R ranking happens.", choices=BUDGETS),
        Param("mask", str, "fisher", "The score that ranks candidates.", choices=MASK_KINDS),
        Param("use_sign", bool, True, "Only sign-conflicting entries are candidates."),
        Param("recalibrate", bool, True, "Recalibrate the kept delta (OBS)."),
        Param("official", bool, False, "Start from the official code's choices."),
    ),
    accepts=("fisher_mode", *(key for key in OFFICIAL if key != "max_length")),
    paper={"rho": 0.5},  # the IRR paper's defaults: ρ = 0.5, Fisher mask, recalibration
    sweep_grid={"rho": [0.3, 0.5, 1.0]},
)
def irr_recipe(job: RealignJob, out: Path) -> Realigned:
    """IRR with Fisher scores of the aligned model on ``job.harmful`` (cached in workdir).

    ``params``: rho (0.5), budget, mask, use_sign, recalibrate, fisher_mode ("per-sample"),
    num_samples, max_length, ``official`` (start from :data:`OFFICIAL`) and any of its keys
    (mask_selection, ties, count_rounding, zero_is_conflict, dead_columns, hessian_padding,
    calibration_format, calibration_rows). Safe responses are generated by the aligned model
    when the harmful data hold none.
    """
    from realignkit.calib.fisher import compute_fisher
    from realignkit.data import read_rows

    params = dict(job.params)
    start = IRRSettings.official() if bool(params.get("official", False)) else IRRSettings()
    choices = {key: params[key] for key in OFFICIAL if key in params and key != "max_length"}
    settings = replace(
        start,
        rho=float(params.get("rho", 0.5)),
        budget=str(params.get("budget", "block")),
        mask=str(params.get("mask", "fisher")),
        use_sign=bool(params.get("use_sign", True)),
        recalibrate=bool(params.get("recalibrate", True)),
        num_samples=int(params.get("num_samples", 128)),
        max_length=int(params.get("max_length", start.max_length)),
        seed=job.seed,
        **choices,
    )
    fisher_dir = None
    if settings.mask == "fisher":
        if job.harmful is None:
            raise RealignError("the irr recipe needs harmful prompts for the Fisher scores")
        mode = str(params.get("fisher_mode", "per-sample"))
        workdir = Path(job.workdir) if job.workdir else out.parent
        fisher_dir = workdir / f"fisher-{mode}-{job.seed}-{settings.num_samples}"
        if not (fisher_dir / "fisher.json").exists():
            compute_fisher(
                job.aligned,
                job.harmful,
                fisher_dir,
                mode=mode,
                generate="response" not in read_rows(job.harmful)[0],
                num_samples=settings.num_samples,
                max_length=settings.max_length,
                seed=job.seed,
                overwrite=True,
            )
    if job.adapter is not None:
        weights = FinetunedWeights(base=job.aligned, adapter=job.adapter)
    else:
        weights = FinetunedWeights(job.finetuned, base=job.aligned)
    fisher = FisherScores(fisher_dir) if fisher_dir is not None else None
    try:
        with weights, SafetyVector(job.safety_vector) as sv:
            result = irr(
                weights,
                sv,
                out,
                fisher=fisher,
                calibration=job.calibration,
                settings=settings,
                overwrite=job.overwrite,
            )
    finally:
        if fisher is not None:
            fisher.close()
    return Realigned(
        model=out,
        info={
            "rho": settings.rho,
            "removed": result.removed,
            "budget": settings.budget,
            "mask_selection": settings.mask_selection,
        },
    )
