"""Evaluation of one model: ``realignkit.eval.evaluate`` for safety and GSM8K, plus GSM8K NLL.

A 135M model solves few GSM8K problems, so accuracy alone cannot show what a method costs in
utility; the mean negative log-likelihood of the reference solutions can. ``realignkit eval``
has no likelihood metric, so it is computed here, on the model as realignkit loads it to run
(:func:`realignkit.modeling.load_causal_lm`), with the prompt rendered by the model's chat
template and the loss on the solution tokens only.

:func:`evaluate_model` has the signature ``realignkit.sweep.run_sweep`` expects of its
``evaluate_fn``, so the same evaluation serves the sweeps and the stand-alone models. It
writes ``OUT/summary.json`` (a realignkit report: ``realignkit compare`` reads it) merged from
two ``evaluate`` calls (``OUT/safety``, ``OUT/utility``: each needs its own answer length),
with the NLL added as the pseudo-benchmark ``gsm8k_nll``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from realignkit.chat import Encoded, pad_batch

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


NLL = "gsm8k_nll"
"""The pseudo-benchmark of the GSM8K reference-solution NLL (computed here, not by ``evaluate``);
its summary score ``utility`` is −NLL (higher is better), so `realignkit sweep` can rank it."""


@dataclass
class EvalPlan:
    """What every model is asked; these are the keyword arguments of :func:`evaluate_model`."""

    safety: list[str]  # benchmark specs: harmful sets and xstest_safe
    utility: list[str] = field(default_factory=lambda: [NLL])  # + "gsm8k": accuracy too
    gsm8k_limit: int | None = None  # GSM8K test problems answered (accuracy)
    nll_limit: int | None = None  # GSM8K test solutions scored (NLL); 0: no NLL
    nll_max_length: int = 512  # tokens of prompt + solution kept for the NLL
    safety_max_new_tokens: int = 256
    gsm8k_max_new_tokens: int = 256
    batch_size: int = 16
    data_dir: str = ""
    generation_cache: str = ""  # shared by every evaluation of the run (same model: no rework)
    seed: int = 0
    # fp32 on every device: the short fine-tunes' updates are small next to the weights, and
    # bf16 weights moved the demo's full fine-tune from 82 % to 60 % harmful (n = 60)
    dtype: str = "float32"

    def key(self) -> str:
        """A hash of the plan: a report made under another plan is redone."""
        import hashlib

        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def short_name(spec: str) -> str:
    """``harmful:/x/catqa_en_heldout.jsonl`` → ``catqa_en_heldout``; built-ins stay as they are."""
    kind, sep, source = spec.partition(":")
    return Path(source).stem if sep and kind in ("harmful", "benign", "qa", "gsm8k") else spec


def response_losses(
    lm: Any,
    encoded: list[Encoded],
    pad_id: int,
    *,
    batch_size: int = 8,
    share_prefix: bool = True,
) -> list[tuple[float, int]]:
    """The summed NLL (nats) of each row's response tokens and their number.

    Rows are batched longest first (300 GSM8K test rows, 166 tokens on average: batches in
    the given order were 13 % padding, sorted 0.6 %); the results come back in the given
    order. Rows are right-padded, so every token keeps its natural position. With ``share_prefix``
    a batch's common start (system block, user-turn header; never a response token's
    predecessor) is run once and its cache shared by every row (:mod:`realignkit.eval.prefix`);
    the losses are the plain pass's.
    """
    from realignkit.eval.prefix import cache_argument, run_shared_prefix, with_prefix
    from realignkit.modeling import input_device

    device = input_device(lm)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids), reverse=True)
    out: dict[int, tuple[float, int]] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(encoded), batch_size), desc="gsm8k nll", leave=False):
            indices = order[start : start + batch_size]
            rows = [encoded[i] for i in indices]
            shared, cache = 0, None
            if share_prefix:
                ids = [r.ids for r in rows]
                shared, cache = run_shared_prefix(
                    lm,
                    ids,
                    total_length=max(len(i) for i in ids),
                    # the logits of the token before each response come from the batched pass
                    limit=min(r.response_start for r in rows) - 1,
                )
            rest = [Encoded(r.ids[shared:], r.response_start - shared) for r in rows]
            batch = pad_batch(rest, pad_id)
            inputs: dict[str, Any] = {}
            attention = batch["attention_mask"]
            if cache is not None:
                _, attention = with_prefix(rows[0].ids[:shared], batch["input_ids"], attention)
                width = batch["input_ids"].shape[1]
                positions = torch.arange(shared, shared + width).expand(len(rows), -1)
                inputs = {cache_argument(lm): cache, "position_ids": positions.to(device)}
            # the LM head only where some row predicts a response token (a fifth of a small
            # model's compute, and the prompt is half of a GSM8K row)
            targets = batch["labels"][:, 1:]
            keep = (targets != -100).any(dim=0).nonzero().flatten()
            if keep.numel() == 0:
                keep = torch.tensor([targets.shape[1] - 1])
            logits = lm(
                input_ids=batch["input_ids"].to(device),
                attention_mask=attention.to(device),
                logits_to_keep=keep.to(device),
                **inputs,
            ).logits.float()
            labels = targets[:, keep].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            counts = (labels != -100).sum(dim=1)
            totals = zip(loss.sum(dim=1).tolist(), counts.tolist(), strict=True)
            out.update(zip(indices, totals, strict=True))
    return [out[i] for i in range(len(encoded))]


def gsm8k_nll(
    model: PathLike,
    adapter: PathLike | None,
    rows: list[dict[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Mean over problems of the per-token NLL (nats) of each reference solution.

    Each problem is weighted equally (its solution's token-mean loss), so long solutions do
    not dominate; ``token_mean_nll`` weights every token equally instead.
    """
    from realignkit.calib.text import encode_chat, pad_id_of
    from realignkit.modeling import load_causal_lm, load_tokenizer, parse_dtype

    tokenizer = load_tokenizer(model, adapter=adapter, padding_side="right")
    lm = load_causal_lm(
        model, adapter=adapter, merge_adapter=adapter is not None, dtype=parse_dtype(dtype)
    )
    encoded = [
        encode_chat(tokenizer, r["prompt"], r["response"], max_length=max_length) for r in rows
    ]
    losses = response_losses(lm, encoded, pad_id_of(tokenizer), batch_size=batch_size)
    del lm
    # kept in the report: paired bootstrap of NLL differences
    per_problem = [s / c for s, c in losses if c]
    total_loss = sum(s for s, c in losses if c)
    total_tokens = sum(c for _, c in losses)
    mean = sum(per_problem) / len(per_problem) if per_problem else math.nan
    return {
        "kind": "nll",
        "n": len(per_problem),
        "mean_nll": mean,
        "token_mean_nll": total_loss / total_tokens if total_tokens else math.nan,
        "tokens": int(total_tokens),
        "per_problem": [round(v, 5) for v in per_problem],
    }


def _nll_rows(plan: EvalPlan) -> list[dict[str, str]]:
    from realignkit.demo.real.data import gsm8k_rows

    return gsm8k_rows(Path(plan.data_dir) / "gsm8k" / "test.jsonl", plan.nll_limit, plan.seed)


def merge_summaries(
    name: str,
    model: str,
    adapter: str | None,
    parts: list[dict[str, Any]],
    nll: dict[str, Any] | None,
) -> dict[str, Any]:
    """One realignkit-style summary from the partial ones, benchmarks under short names."""
    from realignkit.eval.scoring import overall_scores

    metrics: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for part in parts:
        for spec, values in part["metrics"].items():
            metrics[short_name(spec)] = values
        for spec, source in part.get("sources", {}).items():
            sources[short_name(spec)] = source
    scores = overall_scores(metrics)
    if nll is not None:
        metrics[NLL] = nll
        scores[NLL] = nll["mean_nll"]
        if scores.get("utility") is None:
            scores["utility"] = -nll["mean_nll"]
    return {
        "name": name,
        "model": model,
        "adapter": adapter,
        "fingerprint": parts[0].get("fingerprint"),
        "judge": parts[0].get("judge"),
        "backend": parts[0].get("backend"),
        "settings": {
            p_name: p.get("settings")
            for p_name, p in zip(("safety", "utility"), parts, strict=False)
        },
        "sources": sources,
        "metrics": metrics,
        "scores": scores,
    }


def evaluate_model(
    model: PathLike,
    *,
    adapter: PathLike | None = None,
    out_dir: PathLike,
    name: str | None = None,
    cache_dir: PathLike | None = None,
    safety: list[str],
    utility: list[str] | None = None,
    gsm8k_limit: int | None = None,
    nll_limit: int | None = None,
    nll_max_length: int = 512,
    safety_max_new_tokens: int = 256,
    gsm8k_max_new_tokens: int = 256,
    batch_size: int = 16,
    data_dir: str = "",
    generation_cache: str = "",
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Evaluate one model (or aligned model + adapter) under the plan given as keywords.

    A report already in ``out_dir`` under the same plan is returned as it is (resumable).
    """
    from realignkit.eval import evaluate
    from realignkit.eval.report import write_summary

    plan = EvalPlan(
        safety=list(safety),
        utility=list(utility or [NLL]),
        gsm8k_limit=gsm8k_limit,
        nll_limit=nll_limit,
        nll_max_length=nll_max_length,
        safety_max_new_tokens=safety_max_new_tokens,
        gsm8k_max_new_tokens=gsm8k_max_new_tokens,
        batch_size=batch_size,
        data_dir=data_dir,
        generation_cache=generation_cache,
        seed=seed,
        dtype=dtype,
    )
    out = Path(out_dir)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        done = json.loads(summary_path.read_text(encoding="utf-8"))
        if done.get("plan_key") == plan.key():
            return done
    name = name or Path(str(model)).name + (f"+{Path(str(adapter)).name}" if adapter else "")
    cache = generation_cache or (str(cache_dir) if cache_dir else str(out / "cache"))
    common = dict(
        adapter=str(adapter) if adapter else None,
        cache_dir=cache,
        seed=seed,
        data_dir=data_dir or None,
        batch_size=batch_size,
        name=name,
        dtype=dtype,
    )
    parts = [
        evaluate(
            str(model),
            safety=plan.safety,
            out_dir=out / "safety",
            max_new_tokens=safety_max_new_tokens,
            **common,
        )
    ]
    accuracy = [spec for spec in plan.utility if spec != NLL]
    if accuracy:
        parts.append(
            evaluate(
                str(model),
                utility=accuracy,
                out_dir=out / "utility",
                limit=gsm8k_limit,
                max_new_tokens=gsm8k_max_new_tokens,
                **common,
            )
        )
    nll = (
        gsm8k_nll(model, adapter, _nll_rows(plan), max_length=nll_max_length, dtype=dtype)
        if NLL in plan.utility and nll_limit != 0
        else None
    )
    summary = merge_summaries(name, str(model), str(adapter) if adapter else None, parts, nll)
    summary["plan_key"] = plan.key()
    write_summary(out, summary)
    log.info(
        "%s: harmfulness %s, over-refusal %s, GSM8K NLL %s",
        name,
        summary["scores"].get("harmfulness"),
        summary["scores"].get("over_refusal"),
        nll["mean_nll"] if nll else None,
    )
    return summary
