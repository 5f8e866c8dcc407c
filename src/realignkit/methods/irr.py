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

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from realignkit.calib.fisher import FISHER_MODES
from realignkit.checkpoint import FinetunedWeights, FisherScores, SafetyVector
from realignkit.contract import Edit, LayerInputs, Method, Param
from realignkit.errors import RealignError
from realignkit.ops.masks import (
    BUDGETS,
    COUNT_ROUNDINGS,
    MASK_KINDS,
    TIES,
    GlobalCutoff,
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

    def params(self) -> dict[str, Any]:
        """The declared parameters (:data:`IRR`) these settings give; device and dtype are the
        executor's."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME}

    def check(self) -> None:
        """A one-line error for any value outside its declared range or rule."""
        IRR.resolve(self.params())

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> IRRSettings:
        """Resolved parameters as settings (what the step functions below read)."""
        values = {k: v for k, v in params.items() if k in _FIELDS}
        if values.get("modules") is not None:
            values["modules"] = list(values["modules"])
        return cls(**values)


RUNTIME = ("device", "dtype")  # where and in which precision the model runs: not IRR's own
_FIELDS = {f.name for f in fields(IRRSettings)}


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


# --- one weight: identify → remove → recalibrate ------------------------------------------------


def _kernel(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A stored tensor as ``(out, in)`` (GPT-2's Conv1D stores ``(in, out)``)."""
    return tensor.t() if transposed else tensor


def _oriented(given: LayerInputs, settings: IRRSettings) -> tuple[torch.Tensor, ...]:
    """δ, v (None: a low-rank safety vector that does not touch this weight, v = 0) and the
    ranking scores of one weight, ``(out, in)`` on the compute device."""
    stored = given.stored
    assert stored is not None and stored.base is not None
    flip, device = stored.transposed, given.device
    delta = _kernel(stored.finetuned.float() - stored.base.float(), flip).to(device)
    sv = stored.safety_vector
    safety = None if sv is None else _kernel(sv.float(), flip).to(device)
    fisher = None if stored.fisher is None else _kernel(stored.fisher, flip).to(device)
    scores = ranking_scores(
        settings.mask, delta=delta, fisher=fisher, seed=settings.seed, name=given.name
    )
    return delta, safety, scores


def edit_layer(given: LayerInputs, params: Mapping[str, Any]) -> Edit:
    """IRR on one weight; with a Hessian (recalibration) or without (removal only)."""
    settings = IRRSettings.of(params)
    delta, safety, scores = _oriented(given, settings)
    hessian = given.hessian
    start = delta  # what identification and the sweep start from
    if hessian is not None and settings.dead_columns == "zero":
        # Inputs the calibration data never activate: δ = 0 there before anything is chosen.
        start = delta.masked_fill(torch.diagonal(hessian).eq(0).unsqueeze(0), 0.0)
    adaptive = hessian is not None and settings.mask_selection == "adaptive"
    if adaptive:
        kept, unsafe, candidates = recalibrate_adaptive(start, safety, scores, hessian, settings)
    else:
        unsafe, candidates = identify(start, safety, scores, settings, given.prepared)
    stats = LayerStats(given.name, delta.numel(), candidates, int(unsafe.sum()))
    stored = given.stored
    assert stored is not None
    theta_f, theta_b, flip = stored.finetuned, stored.base, stored.transposed
    unsafe_stored = _kernel(unsafe, flip).cpu()
    if hessian is None:
        # Remove only, done in the stored dtype so that unsafe entries are θ_B bit for bit
        # and all others θ_F bit for bit (θ_B + δ would round).
        new = torch.where(unsafe_stored, theta_b, theta_f)
    else:
        if not adaptive:
            kept = recalibrate(start, unsafe, hessian, settings)
        stats.error_removed = output_error(remove(delta, unsafe) - delta, hessian)
        stats.error_recalibrated = output_error(kept - delta, hessian)
        recal = (theta_b.float() + _kernel(kept, flip).cpu()).to(theta_f.dtype)
        new = torch.where(unsafe_stored, theta_b, recal)
    # θ_B and θ_F may differ in dtype (torch.where promotes): store θ_F's dtype.
    new = new.to(theta_f.dtype)
    layer_stats = asdict(stats)
    del layer_stats["name"]
    return Edit(_kernel(new, flip), layer_stats)


def _global_cutoff(stream: Callable[[], Iterator[LayerInputs]], params: Mapping[str, Any]) -> Any:
    """Two streaming passes (coarse then fine histogram) find the model-wide top-R cutoff."""
    from tqdm.auto import tqdm

    settings = IRRSettings.of(params)

    def candidates_and_scores(given: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        delta, safety, scores = _oriented(given, settings)
        return candidates_of(delta, safety, settings), scores

    high = torch.zeros(1 << 16, dtype=torch.long)
    total = 0
    for given in tqdm(stream(), desc="global ranking (1/2)"):
        cand, scores = candidates_and_scores(given)
        high += key_histogram(scores, cand)
        total += int(cand.sum())

    def low_histogram(high_bin: int) -> torch.Tensor:
        low = torch.zeros(1 << 16, dtype=torch.long)
        for given in tqdm(stream(), desc="global ranking (2/2)"):
            cand, scores = candidates_and_scores(given)
            low += key_histogram(scores, cand, high_bin=high_bin)
        return low

    removals = removal_count(settings.rho, total, rounding=settings.count_rounding)
    return global_cutoff(high, low_histogram, removals)


# --- calibration data ---------------------------------------------------------------------------


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


def _batches(path: Any, tokenizer: Any, params: Mapping[str, Any], vocab: int | None) -> list:
    settings = IRRSettings.of(params)
    examples = calibration_examples(path, tokenizer, settings, vocab_size=vocab)
    return calibration_batches(examples, tokenizer, settings)


def check_calibration_size(
    positions: int, widest: tuple[str, int], params: Mapping[str, Any], source: PathLike
) -> None:
    """Refuse no tokens (or fewer than an explicit ``min_calibration_tokens``); warn, with the
    numbers, when fewer positions than a layer's inputs leave its Hessian rank-deficient:
    damping keeps it invertible and the sweep runs (as the official code does)."""
    needed = params["min_calibration_tokens"]
    if positions == 0 or (needed is not None and positions < needed):
        raise RealignError(
            f"calibration data {str(source)!r} give {positions} tokens, fewer than "
            f"--min-calibration-tokens {needed or 1}: use more --num-samples or a longer "
            "--max-length"
        )
    name, inputs = widest
    if positions < inputs:
        log.warning(
            "calibration data %s give %d token positions, fewer than the %d inputs of %s: "
            "its Hessian has rank at most %d of %d; damping (%g x mean diag H) keeps it "
            "invertible, but the compensation is under-determined (more --num-samples or a "
            "longer --max-length help)",
            source,
            positions,
            inputs,
            name,
            positions,
            inputs,
            params["damping"],
        )


# --- the declaration ----------------------------------------------------------------------------

_D = IRRSettings()  # the defaults live in one place: the settings dataclass
OFFICIAL_PANEL = "Official behaviour"  # the command's help lists these apart
OFFICIAL_PARAM = Param(
    "official",
    bool,
    False,
    "Start from what the official IRR code computes (mask selection, ties, count rounding, "
    "zero conflicts, dead columns, Hessian padding, calibration format and rows, block size, "
    "max length); explicit values still win.",
    panel=OFFICIAL_PANEL,
)
PARAMS = (
    Param(
        "rho",
        float,
        _D.rho,
        "R: fraction of sign-conflicting entries removed (the official --sparsity s is 1 - R).",
        low=0.0,
        high=1.0,
        safer="higher",
        search=(0.0, 1.0),
    ),
    Param(
        "budget",
        str,
        _D.budget,
        "Where the top-R ranking happens: within each --block-size column block, per "
        "matrix, or over the whole model.",
        choices=BUDGETS,
    ),
    Param(
        "mask",
        str,
        _D.mask,
        "Score that ranks candidates: Fisher scores, |δ| (magnitude) or random.",
        choices=MASK_KINDS,
    ),
    Param(
        "use_sign",
        bool,
        _D.use_sign,
        "Only sign-conflicting entries are candidates (--no-sign: every entry).",
        flag="--sign",
    ),
    Param("recalibrate", bool, _D.recalibrate, "OBS recalibration of the retained delta."),
    Param("damping", float, _D.damping, "Damping, a fraction of mean(diag H).", low=0.0),
    Param("block_size", int, _D.block_size, "Columns per ranking block / OBS batch.", low=1),
    Param(
        "refine_steps",
        int,
        _D.refine_steps,
        "Conjugate-gradient steps after the SparseGPT sweep, toward the exact least-squares "
        "compensation (0: as the paper).",
        low=0,
    ),
    Param(
        "modules",
        str,
        _D.modules,
        "Linear layers to edit, e.g. q_proj,v_proj (default: all).",
        multiple=True,
        optional=True,
    ),
    Param(
        "num_samples", int, _D.num_samples, "Calibration rows used (see --calibration-rows).", low=1
    ),
    Param("max_length", int, _D.max_length, "Tokens per calibration row, at most.", low=2),
    Param("batch_size", int, _D.batch_size, "Rows per forward pass.", low=1, sweepable=False),
    Param(
        "min_calibration_tokens",
        int,
        _D.min_calibration_tokens,
        "Refuse fewer calibration tokens (default: warn below the widest layer's inputs).",
        low=0,
        optional=True,
    ),
    Param("prompt_column", str, _D.prompt_column, "Column of the prompts.", sweepable=False),
    Param(
        "response_column",
        str,
        _D.response_column,
        "Column of the responses (default: 'response' if present).",
        optional=True,
        sweepable=False,
    ),
    Param(
        "seed", int, _D.seed, "Seed of random masks and of the calibration sample.", sweepable=False
    ),
    Param(
        "mask_selection",
        str,
        _D.mask_selection,
        "fixed: one mask on the original delta; adaptive: each block's mask chosen inside the "
        "sweep on the updated delta (official).",
        choices=MASK_SELECTIONS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "ties",
        str,
        _D.ties,
        "Tied scores at the cut: remove the earlier entry, or the later one (official).",
        choices=TIES,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "count_rounding",
        str,
        _D.count_rounding,
        "half-up: remove round(R·n) of n candidates; keep-floor: keep floor((1-R)·n) (official).",
        choices=COUNT_ROUNDINGS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "zero_is_conflict",
        bool,
        _D.zero_is_conflict,
        "Count a zero delta or zero safety entry as a sign conflict (official).",
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "dead_columns",
        str,
        _D.dead_columns,
        "Inputs never active on the calibration data (H_jj = 0): keep the retained delta, or "
        "zero it (official).",
        choices=DEAD_COLUMNS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "hessian_padding",
        str,
        _D.hessian_padding,
        "real-tokens: right padding left out of H; left-eos: sequences left-padded with EOS to "
        "--max-length, every position in H (official).",
        choices=HESSIAN_PADDINGS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "calibration_format",
        str,
        _D.calibration_format,
        "chat: the chat template; official: Llama-2 system prompt, '{prompt}\\n{input}', "
        "response + EOS.",
        choices=CALIBRATION_FORMATS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "calibration_rows",
        str,
        _D.calibration_rows,
        "random: a seeded subsample of --num-samples rows; first: the first rows (official).",
        choices=CALIBRATION_ROWS,
        panel=OFFICIAL_PANEL,
    ),
    Param(
        "text_column",
        str,
        _D.text_column,
        "Calibrate on raw text in this column (tokenised as it is).",
        optional=True,
        sweepable=False,
    ),
    Param(
        "ids_column",
        str,
        _D.ids_column,
        "Rows with this column are token id lists, used as they are.",
        sweepable=False,
    ),
    Param(
        "input_column",
        str,
        _D.input_column,
        "--calibration-format official: the column of '{input}'.",
        sweepable=False,
    ),
    OFFICIAL_PARAM,
    Param(
        "fisher_mode",
        str,
        "per-sample",
        "Recipes: how the Fisher scores of the aligned model are computed.",
        choices=FISHER_MODES,
        cli=False,  # the command reads given --fisher scores (`realignkit fisher --mode`)
    ),
)


def _presets(values: Mapping[str, Any]) -> dict[str, Any]:
    """``official``: the official code's behaviour under the values given."""
    if OFFICIAL_PARAM.check(values.get("official", False), "official"):
        return {**OFFICIAL, **values}
    return dict(values)


def _validate(params: Mapping[str, Any]) -> None:
    """The rules that tie parameters together."""
    if params["mask_selection"] == "adaptive" and params["budget"] != "block":
        raise RealignError(
            f"--mask-selection adaptive chooses the mask block by block: it needs "
            f"--budget block, not {params['budget']!r}"
        )
    if params["ties"] == "later" and params["budget"] == "global":
        raise RealignError("--ties later is defined for --budget block and matrix only")
    if params["dead_columns"] == "zero" and params["budget"] == "global":
        # The global ranking is computed before any Hessian says which inputs are dead.
        raise RealignError("--dead-columns zero is defined for --budget block and matrix only")


def _needs_when(params: Mapping[str, Any]) -> dict[str, str]:
    needs = {"base": "IRR needs --base, the model the fine-tune started from"}
    if params["mask"] == "fisher":
        needs["fisher"] = "--mask fisher needs --fisher (from `realignkit fisher`)"
    if params["recalibrate"]:
        needs["calibration"] = "recalibration needs --calibration data (or pass --no-recalibrate)"
    return needs


def _report(params: Mapping[str, Any], stats: Mapping[str, dict]) -> dict[str, Any]:
    entries = sum(s["entries"] for s in stats.values())
    removed = sum(s["removed"] for s in stats.values())
    return {
        "removed": removed,
        "entries removed": f"{removed} of {entries} ({100 * removed / max(entries, 1):.3f}%); "
        f"{sum(s['candidates'] for s in stats.values())} candidates",
        "official preset (all of --official)": IRRSettings.of(params).is_official,
    }


def _card(params: Mapping[str, Any], stats: Mapping[str, dict]) -> tuple[str, str]:
    settings = IRRSettings.of(params)
    padding = (
        "every position of the EOS-left-padded calibration sequences"
        if settings.hessian_padding == "left-eos"
        else "non-padding calibration tokens"
    )
    adaptive = (
        f"; each {settings.block_size}-column block's mask is chosen inside the sweep, on the "
        "delta as the blocks to its left left it."
        if settings.mask_selection == "adaptive"
        else "."
    )
    lines = [
        "## Method",
        "",
        "IRR: entries of δ = θ_F − θ_B whose sign conflicts with the safety vector are ranked "
        "by the chosen score inside each budget unit; the top R are reset to θ_B"
        + (
            "; the retained delta of each linear layer is then recalibrated with Optimal Brain "
            f"Surgeon updates (SparseGPT sweep, H = (2/n) Σ x xᵀ over {padding}, layer inputs "
            f"from the already edited blocks){adaptive}"
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
    for name, s in stats.items():
        err_r = "-" if s["error_removed"] is None else f"{s['error_removed']:.4g}"
        err_c = "-" if s["error_recalibrated"] is None else f"{s['error_recalibrated']:.4g}"
        lines.append(
            f"| {name} | {s['entries']} | {s['candidates']} | {s['removed']} | "
            f"{100 * s['removed'] / max(s['entries'], 1):.3f} | {err_r} | {err_c} |"
        )
    lines += [
        "",
        "Output errors are mean squared changes of the layer output per calibration token "
        "relative to the fine-tuned layer, on the inputs the layer saw during recalibration.",
    ]
    return "IRR", "\n".join(lines)


def _layers(stats: Mapping[str, dict]) -> list[LayerStats]:
    return [LayerStats(name, **s) for name, s in stats.items()]


def _irr_json(params: Mapping[str, Any], output: Any) -> dict[str, Any]:
    """``irr.json``: IRR's settings and per-layer statistics (read by earlier tooling)."""
    inputs = {role: value["path"] for role, value in output.meta["inputs"].items()}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    layers = [asdict(s) for s in _layers(output.stats)]
    return {META_FILE: {"method": "irr", "inputs": inputs, "settings": settings, "layers": layers}}


def _job_inputs(job: Any, params: Mapping[str, Any], out: Any) -> dict[str, Any]:
    """Registry runs: the aligned model's Fisher scores on the job's harmful prompts (cached
    in the job's workdir); safe responses are generated when the data hold none."""
    if params["mask"] != "fisher":
        return {}
    from realignkit.calib.fisher import compute_fisher
    from realignkit.checkpoint.fingerprint import source_fingerprint
    from realignkit.data import read_rows

    if job.harmful is None:
        raise RealignError("the irr recipe needs harmful prompts for the Fisher scores")
    mode = params["fisher_mode"]
    workdir = Path(job.workdir) if job.workdir else Path(out).parent
    # Keyed by everything the scores depend on, none of it the fine-tune: the sweeps of one
    # run (every fine-tune and seed) share a workdir and compute the scores once.
    stamp = [
        source_fingerprint(job.aligned),
        source_fingerprint(job.harmful),
        mode,
        params["seed"],
        params["num_samples"],
        params["max_length"],
    ]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    folder = workdir / f"fisher-{mode}-{key}"
    if not (folder / FisherScores.index_file).exists():
        compute_fisher(
            job.aligned,
            job.harmful,
            folder,
            mode=mode,
            generate="response" not in read_rows(job.harmful)[0],
            num_samples=params["num_samples"],
            max_length=params["max_length"],
            seed=params["seed"],
            overwrite=True,
        )
    return {"fisher": folder}


IRR = Method(
    name="irr",
    version=1,
    summary="A fine-tuned model re-aligned for safety by IRR: unsafe delta parameters "
    "identified, removed and the rest recalibrated.",
    kind="layer",
    params=PARAMS,
    help="IRR: identify unsafe delta entries, reset them to the base model, recalibrate the rest.",
    needs=frozenset({"finetuned", "base", "safety_vector"}),
    may_need=frozenset({"fisher", "calibration"}),
    edit_layer=edit_layer,
    needs_when=_needs_when,
    validate=_validate,
    presets=_presets,
    card=_card,
    report=_report,
    extra_meta=_irr_json,
    runs="finetuned",
    runs_model=lambda params: bool(params["recalibrate"]),
    data="calibration",
    batches=_batches,
    check_tokens=check_calibration_size,
    prepare=_global_cutoff,
    prepare_when=lambda params: params["budget"] == "global",
    job_inputs=_job_inputs,
    cli=False,  # `realignkit irr` adds --sparsity and --true-sequential (cli/irr.py)
    paper={"rho": 0.5},  # the IRR paper's defaults: ρ = 0.5, Fisher mask, recalibration
    sweep_grid={"rho": [0.3, 0.5, 1.0]},
)


# --- the Python call ----------------------------------------------------------------------------


def irr(
    weights: FinetunedWeights | PathLike,
    safety_vector: SafetyVector | PathLike,
    out: PathLike,
    *,
    fisher: FisherScores | PathLike | None = None,
    calibration: PathLike | None = None,
    settings: IRRSettings | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    progress: bool = True,
) -> IRRResult:
    """Write the IRR re-aligned model to ``out`` (a normal model folder with a model card).

    ``weights`` are opened fine-tuned weights (their base is θ_B) or a fine-tuned folder;
    the executor (:mod:`realignkit.execute`) does the reading, checking and writing.
    """
    from realignkit.execute import Sources, execute, sources_of

    settings = settings or IRRSettings()
    if isinstance(weights, FinetunedWeights):
        sources = sources_of(weights)
        sources.allow_pickle = weights.allow_pickle
    else:
        sources = Sources(finetuned=weights)
    sources.safety_vector = getattr(safety_vector, "dir", safety_vector)
    sources.fisher = getattr(fisher, "dir", fisher)
    sources.calibration = calibration
    output = execute(
        IRR,
        sources,
        out,
        settings.params(),
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        device=settings.device,
        dtype=settings.dtype,
        progress=progress,
    )
    return IRRResult(output.path, _layers(output.stats))
