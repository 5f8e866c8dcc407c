"""Safe LoRA (Hsu et al., NeurIPS 2024): project fine-tuning updates onto the alignment subspace.

For every adapted weight, with the aligned chat model ``W_A`` and its pre-trained base ``W_P``::

    V = W_A − W_P                      (out, in): what alignment changed
    C = V·Vᵀ / ‖V‖_F                   (out, out), never formed: C·X = V·(Vᵀ·X) / ‖V‖_F
    s = cos(C·B·A, B·A)                 Frobenius cosine of the flattened matrices
    B ← C·B   where s ≤ threshold       (or for the K layers of lowest s)

A LoRA update far from the alignment subspace (low ``s``) is the one that can undo alignment;
projecting ``B`` pulls that layer's update into the subspace, and the other layers keep their
task update as trained. The output is again a PEFT adapter (same config, same tensor names,
projected ``B``'s, untouched ``A``'s), to be loaded on the aligned model.

``safelora_full`` does the same for a full fine-tune: each decoder-block weight's delta
``ΔW = W_F − W_A`` is projected (``W_A + C·ΔW``) in the selected layers.

Orientation: the projection acts on the layer's output space. GPT-2's Conv1D stores its
weight as ``(in, out)`` (LoRA's ``fan_in_fan_out``), so its stored ``V`` is transposed first.
Layers are streamed: memory holds a few weights at a time, plus the adapter itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from realignkit.contract import Edit, Method, Param, WeightInputs
from realignkit.errors import RealignError
from realignkit.ops.projection import (
    apply_alignment_projection,
    frobenius_cosine,
    lowrank_cosine,
    select_for_projection,
)

PathLike = str | os.PathLike[str]
META_FILE = "safelora.json"
DEFAULT_THRESHOLD = 0.5


@dataclass
class LayerSimilarity:
    """One adapted weight: the cosine of its projected and original update, and the verdict."""

    name: str
    similarity: float
    projected: bool = False


@dataclass
class SafeLoraResult:
    """Where the output went and what happened to each layer."""

    path: Path
    layers: list[LayerSimilarity] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def projected(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.projected]


def check_selection(threshold: float | None, num_layers: int | None) -> dict[str, Any]:
    """The selection rule as ``{"threshold": t}`` or ``{"num_layers": k}`` (default t = 0.5)."""
    if threshold is not None and num_layers is not None:
        raise RealignError("give --threshold or --num-layers, not both")
    if num_layers is not None:
        if num_layers < 1:
            raise RealignError(f"--num-layers must be at least 1, got {num_layers}")
        return {"num_layers": int(num_layers)}
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise RealignError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
    return {"threshold": threshold}


def check_layer_count(selection: dict[str, Any], count: int) -> None:
    """``--num-layers`` must not exceed the number of projectable layers (checked up front)."""
    if selection.get("num_layers", 0) > count:
        raise RealignError(
            f"--num-layers {selection['num_layers']} exceeds the {count} layers "
            "that can be projected"
        )


def _select(similarities: list[float], selection: dict[str, Any]) -> list[bool]:
    check_layer_count(selection, len(similarities))
    return select_for_projection(similarities, **selection)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        from realignkit.modeling import default_device

        found = default_device()
        return found if found.type == "cuda" else torch.device("cpu")
    return torch.device(device)


def _layers_card(layers: list[LayerSimilarity], selection: dict[str, Any]) -> str:
    rule = (
        f"cosine ≤ {selection['threshold']}"
        if "threshold" in selection
        else f"the {selection['num_layers']} least similar layers"
    )
    lines = [
        "## Method",
        "",
        "Safe LoRA: for each weight, V = W_aligned − W_pretrained and C = V·Vᵀ/‖V‖_F. The "
        "update is projected onto the alignment subspace (B ← C·B for LoRA, ΔW ← C·ΔW for a full "
        "fine-tune) where the cosine similarity between the projected and the original update "
        f"is low ({rule}).",
        "",
        "## Layers",
        "",
        "| layer | cosine similarity | projected |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {layer.name} | {layer.similarity:.6f} | {'yes' if layer.projected else 'no'} |"
        for layer in layers
    ]
    return "\n".join(lines) + "\n"


def _meta(result: SafeLoraResult, inputs: dict[str, str], form: str) -> dict[str, Any]:
    return {
        "method": "safelora",
        "form": form,
        "inputs": inputs,
        "selection": result.selection,
        "layers": [vars(layer) for layer in result.layers],
    }


def _alignment(given: WeightInputs, compute: torch.device) -> tuple[torch.Tensor, float]:
    """``V = W_A − W_P`` of one weight in (out, in) orientation on ``compute`` (float32, or
    float64 for float64 checkpoints) and ``‖V‖_F``, or an error when alignment left it alone."""
    assert given.aligned is not None and given.pretrained is not None
    wide = torch.float64 if given.aligned.dtype == torch.float64 else torch.float32
    v = given.aligned.to(compute, wide) - given.pretrained.to(compute, wide)
    if given.transposed:
        v = v.T
    norm = float(torch.linalg.matrix_norm(v))
    if norm == 0.0:
        raise RealignError(
            f"tensor {given.name!r} is the same in the aligned and the pre-trained model: "
            "Safe LoRA needs what alignment changed (check --aligned and --pretrained)"
        )
    return v, norm


def _projected(given: WeightInputs, params: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
    """The projected update of one weight and its cosine with the update: ``C·B`` against
    ``B·A`` for a LoRA adapter's factors, ``C·ΔW`` against ``ΔW = W_F − W_A`` otherwise."""
    compute = _resolve_device(params["device"])
    v, norm = _alignment(given, compute)
    if given.lora is not None:
        b = given.lora.lora_b.to(compute, v.dtype)
        projected_b = apply_alignment_projection(v, b, norm)
        return projected_b, lowrank_cosine(projected_b, b, given.lora.lora_a.to(compute))
    assert given.aligned is not None
    delta = given.finetuned.to(compute, v.dtype) - given.aligned.to(compute, v.dtype)
    delta = delta.T if given.transposed else delta
    projected = apply_alignment_projection(v, delta, norm)
    return projected, frobenius_cosine(projected, delta)


def _similarity(given: WeightInputs, params: Mapping[str, Any]) -> float:
    return _projected(given, params)[1]


def _edit(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    """Where the weight is chosen (by rank, or similarity ≤ threshold): ``B ← C·B`` for an
    adapter, ``W_A + C·ΔW`` for a full fine-tune; the update as it was elsewhere."""
    projected, similarity = _projected(given, params)
    chosen = given.chosen
    if chosen is None:
        chosen = similarity <= _rule(params)["threshold"]
    stats = {"similarity": similarity, "projected": bool(chosen)}
    if given.lora is not None:
        return Edit(projected if chosen else given.lora.lora_b, stats)
    if not chosen:
        return Edit(given.finetuned, stats)
    assert given.aligned is not None
    wide = given.aligned.to(projected.device, projected.dtype)
    return Edit(wide + (projected.T if given.transposed else projected), stats)


def _rule(params: Mapping[str, Any]) -> dict[str, Any]:
    return check_selection(params["threshold"], params["num_layers"])


def _choose(scores: Mapping[str, float], params: Mapping[str, Any]) -> set[str]:
    names = list(scores)
    picked = _select([scores[n] for n in names], _rule(params))
    return {n for n, keep in zip(names, picked, strict=True) if keep}


def _layers(stats: Mapping[str, Any]) -> list[LayerSimilarity]:
    return [LayerSimilarity(n, s["similarity"], s["projected"]) for n, s in stats.items()]


def _card(params: Mapping[str, Any], stats: Mapping[str, Any]) -> tuple[str, str]:
    return "Safe LoRA", _layers_card(_layers(stats), _rule(params))


def _safelora_json(params: Mapping[str, Any], output: Any) -> dict[str, Any]:
    """``safelora.json``: the rule and every layer's similarity (read by earlier tooling)."""
    result = SafeLoraResult(output.path, _layers(output.stats), _rule(params))
    inputs = {role: value["path"] for role, value in output.meta["inputs"].items()}
    return {META_FILE: _meta(result, inputs, "adapter" if output.form == "adapter" else "full")}


def _report(_params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    projected = sum(bool(s["projected"]) for s in stats.values())
    return {"projected": projected, "layers": len(stats)}


# Safe LoRA: a LoRA adapter in, a projected adapter out (``adapter_form``); a full fine-tune
# in, a model out. `realignkit safelora` adds --full, which picks the variant (cli/safelora.py).
SAFELORA = Method(
    name="safelora",
    version=1,
    summary="A fine-tune whose least aligned layer updates were projected onto the alignment "
    "subspace of the aligned model (a LoRA adapter stays an adapter: load it on the aligned "
    "model).",
    help="Safe LoRA: project the least aligned layers' updates onto the alignment subspace. "
    "For each weight, C = V·Vᵀ/‖V‖_F with V = W_aligned − W_pretrained; where the cosine "
    "similarity between C·B·A and B·A is at most --threshold (or for the --num-layers least "
    "similar layers), B becomes C·B. --full projects each block weight's ΔW = W_F − W_A instead.",
    kind="weight",
    params=(
        Param(
            "threshold",
            float,
            None,
            "Project weights whose cosine similarity is at most this (default 0.5).",
            low=-1.0,
            high=1.0,
            optional=True,
            safer="higher",
            search=(-1.0, 1.0),
        ),
        Param(
            "num_layers",
            int,
            None,
            "Project the K least similar weights instead.",
            low=1,
            rule="at least 1",
            optional=True,
        ),
        Param("device", str, None, "Where the products run.", optional=True, sweepable=False),
    ),
    needs=frozenset({"finetuned", "aligned", "pretrained"}),
    edit_weight=_edit,
    orientation=True,
    targets="linears",
    adapter_form=True,
    validate=lambda params: _rule(params) and None,
    card=_card,
    scan=_similarity,
    scan_when=lambda params: params["num_layers"] is not None,
    choose=_choose,
    report=_report,
    extra_meta=_safelora_json,
    cli=False,
    paper={"threshold": 0.5},  # the Safe LoRA recipe's default threshold
    sweep_grid={"threshold": [0.3, 0.5, 0.7]},
)
# `safelora --full`: the same method under the name its outputs have carried.
SAFELORA_FULL = replace(
    SAFELORA,
    name="safelora-full",
    summary="A fully fine-tuned model whose least aligned weight updates were projected onto "
    "the alignment subspace of the aligned model.",
    adapter_form=False,
    recipe=False,
)


def safelora(
    aligned: PathLike,
    pretrained: PathLike,
    out: PathLike,
    *,
    adapter: PathLike | None = None,
    finetuned: PathLike | None = None,
    threshold: float | None = None,
    num_layers: int | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    max_shard_size: str | int = "1GB",
    device: str | torch.device | None = None,
    workers: int = 2,
) -> SafeLoraResult:
    """Safe LoRA on a LoRA ``adapter`` trained on ``aligned`` (written: an adapter, ``B ← C·B``
    in the selected layers, every other tensor and the config copied) or on a full fine-tune
    ``finetuned`` (written: a model, ``W_A + C·(W_F − W_A)`` in the selected decoder-block
    weights, ``W_F`` elsewhere).

    Run by the executor: with a threshold, one streaming pass; with ``num_layers``, a first
    pass measures every similarity (nothing kept) and a second writes.
    """
    from realignkit.execute import Sources, execute

    check_selection(threshold, num_layers)
    sources = Sources(
        finetuned=finetuned,
        base=aligned if adapter is not None else None,
        adapter=adapter,
        aligned=aligned,
        pretrained=pretrained,
        allow_pickle=allow_pickle,
    )
    params = {
        "threshold": threshold,
        "num_layers": num_layers,
        "device": None if device is None else str(device),
    }
    output = execute(
        SAFELORA if adapter is not None else SAFELORA_FULL,
        sources,
        out,
        params,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        workers=workers,
    )
    return SafeLoraResult(output.path, _layers(output.stats), _rule(output.params))


def safelora_adapter(
    adapter: PathLike, aligned: PathLike, pretrained: PathLike, out: PathLike, **options: Any
) -> SafeLoraResult:
    """:func:`safelora` on a LoRA adapter (load the output on ``aligned``)."""
    return safelora(aligned, pretrained, out, adapter=adapter, **options)


def safelora_full(
    finetuned: PathLike, aligned: PathLike, pretrained: PathLike, out: PathLike, **options: Any
) -> SafeLoraResult:
    """:func:`safelora` on a full fine-tune."""
    return safelora(aligned, pretrained, out, finetuned=finetuned, **options)
