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
import shutil
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    LoraAdapter,
    check_same_layout,
    ensure_finite,
    model_card,
)
from realignkit.checkpoint.stream import map_ordered
from realignkit.errors import RealignError
from realignkit.methods.base import Edit, Method, Param, WeightInputs
from realignkit.methods.registry import Realigned, RealignJob, recipe
from realignkit.ops.projection import (
    apply_alignment_projection,
    frobenius_cosine,
    lowrank_cosine,
    select_for_projection,
)

PathLike = str | os.PathLike[str]
META_FILE = "safelora.json"
DEFAULT_THRESHOLD = 0.5
ADAPTER_SHARD_BYTES = 1 << 60  # PEFT loads one adapter_model.safetensors: never shard it


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


class AlignmentMatrices:
    """``V = W_A − W_P`` per weight, in (out, in) orientation, on the compute device."""

    def __init__(self, aligned: CheckpointReader, pretrained: CheckpointReader, device: Any):
        self.aligned, self.pretrained, self.device = aligned, pretrained, device

    def get(self, name: str, transposed: bool) -> tuple[torch.Tensor, float]:
        """``V`` (float32, or float64 for float64 checkpoints) and ``‖V‖_F``, or an error."""
        w_a = self.aligned.get(name)
        wide = torch.float64 if w_a.dtype == torch.float64 else torch.float32
        v = w_a.to(self.device, wide) - self.pretrained.get(name).to(self.device, wide)
        if transposed:
            v = v.T
        norm = float(torch.linalg.matrix_norm(v))
        if norm == 0.0:
            raise RealignError(
                f"tensor {name!r} is the same in the aligned and the pre-trained model: "
                "Safe LoRA needs what alignment changed (check --aligned and --pretrained)"
            )
        return v, norm


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


# --- LoRA adapters -----------------------------------------------------------------------------


def safelora_adapter(
    adapter: PathLike,
    aligned: PathLike,
    pretrained: PathLike,
    out: PathLike,
    *,
    threshold: float | None = None,
    num_layers: int | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    device: str | torch.device | None = None,
    workers: int = 2,
) -> SafeLoraResult:
    """Write a Safe LoRA adapter: ``B ← C·B`` in the selected layers, everything else copied."""
    selection = check_selection(threshold, num_layers)
    # Refuses an existing output now, before any work.
    writer = CheckpointWriter(
        out, overwrite=overwrite, max_shard_size=ADAPTER_SHARD_BYTES, weights_name="adapter_model"
    )
    lora = LoraAdapter(adapter)
    aligned_ckpt = CheckpointReader(aligned, allow_pickle=allow_pickle, what="aligned model")
    pretrained_ckpt = CheckpointReader(
        pretrained, allow_pickle=allow_pickle, what="pre-trained model"
    )
    with closing(lora), aligned_ckpt, pretrained_ckpt:
        targets = lora.target_weights()
        lora.check_against(aligned_ckpt)
        check_same_layout(aligned_ckpt, pretrained_ckpt, targets)
        check_layer_count(selection, len(targets))
        b_keys = {name: lora.lora_keys(name)[1] for name in targets}
        compute = _resolve_device(device)
        alignment = AlignmentMatrices(aligned_ckpt, pretrained_ckpt, compute)

        def project(name: str) -> tuple[float, torch.Tensor]:
            factors = lora.factors(name)
            v, norm = alignment.get(name, transposed=factors.transpose)
            b = factors.lora_b.to(compute, v.dtype)
            projected_b = apply_alignment_projection(v, b, norm)
            similarity = lowrank_cosine(projected_b, b, factors.lora_a.to(compute))
            ensure_finite(projected_b, name, "the projected adapter")
            return similarity, projected_b.to("cpu", factors.lora_b.dtype)

        similarities, projected = [], {}
        for name, (similarity, projected_b) in map_ordered(
            project, targets, workers=workers, desc="Safe LoRA", weights=aligned_ckpt.nbytes
        ):
            similarities.append(similarity)
            projected[name] = projected_b
        chosen = _select(similarities, selection)
        result = SafeLoraResult(Path(out), selection=selection)
        replace = {}
        for name, similarity, keep in zip(targets, similarities, chosen, strict=True):
            result.layers.append(LayerSimilarity(name, similarity, keep))
            if keep:
                replace[b_keys[name]] = projected[name]
        del projected
        with writer:
            for key in lora.keys:
                writer.add(key, replace[key] if key in replace else lora.raw(key))
            writer.copy_support_files(lora.dir)
            shutil.copy2(lora.dir / "adapter_config.json", writer.path / "adapter_config.json")
            inputs = {
                "adapter": str(lora.dir),
                "aligned": str(aligned_ckpt.dir),
                "pretrained": str(pretrained_ckpt.dir),
            }
            writer.write_json(META_FILE, _meta(result, inputs, "adapter"))
            writer.write_card(
                model_card(
                    method="Safe LoRA",
                    summary="A LoRA adapter whose least aligned layers were projected onto the "
                    "alignment subspace of its base model. Load it on the aligned model.",
                    inputs=inputs,
                    params=_card_params(result, lora.config),
                    body=_layers_card(result.layers, selection),
                    base_model=str(aligned_ckpt.dir),
                    tags=("peft", "lora"),
                    library_name="peft",
                )
            )
    return result


def _card_params(result: SafeLoraResult, adapter_config: dict[str, Any] | None) -> dict[str, Any]:
    params: dict[str, Any] = dict(result.selection)
    params["layers projected"] = f"{len(result.projected)} of {len(result.layers)}"
    if adapter_config is not None:
        params["LoRA r / alpha"] = (
            f"{adapter_config.get('r')} / {adapter_config.get('lora_alpha')} "
            "(the scale multiplies both sides of the similarity and cancels)"
        )
        params["fan_in_fan_out"] = bool(adapter_config.get("fan_in_fan_out", False))
    return params


# --- full fine-tunes ---------------------------------------------------------------------------


def block_weights(checkpoint: CheckpointReader) -> dict[str, bool]:
    """The decoder blocks' linear weights of a checkpoint → whether stored transposed (Conv1D).

    Found from the model's own module tree (built on the meta device from its config), as IRR
    does, so no architecture table is needed.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from realignkit.calib.blocks import decoder_linears

    try:
        config = AutoConfig.from_pretrained(checkpoint.dir)
    except (OSError, ValueError) as err:
        raise RealignError(
            f"cannot read the model config in {str(checkpoint.dir)!r}: {err}"
        ) from err
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    prefix = getattr(skeleton, "base_model_prefix", "")
    found = {}
    for layer in decoder_linears(skeleton):
        name = layer.weight_name
        if name not in checkpoint and prefix and name.startswith(prefix + "."):
            name = name[len(prefix) + 1 :]
        if name not in checkpoint:
            raise RealignError(
                f"weight {layer.weight_name!r} of the model is missing from the "
                f"{checkpoint.what} {str(checkpoint.dir)!r}"
            )
        found[name] = layer.transposed
    return found


def _oriented_update(given: WeightInputs, compute: torch.device) -> tuple[Any, ...]:
    """``(V, ‖V‖_F, W_A, ΔW)`` of one weight in (out, in) orientation on ``compute``."""
    assert given.aligned is not None and given.pretrained is not None
    wide = torch.float64 if given.aligned.dtype == torch.float64 else torch.float32
    w_a = given.aligned.to(compute, wide)
    v = w_a - given.pretrained.to(compute, wide)
    if given.transposed:
        v = v.T
    norm = float(torch.linalg.matrix_norm(v))
    if norm == 0.0:
        raise RealignError(
            f"tensor {given.name!r} is the same in the aligned and the pre-trained model: "
            "Safe LoRA needs what alignment changed (check --aligned and --pretrained)"
        )
    delta = given.finetuned.to(compute, v.dtype) - w_a
    return v, norm, w_a, delta.T if given.transposed else delta


def _full_similarity(given: WeightInputs, params: Mapping[str, Any]) -> float:
    v, norm, _, delta = _oriented_update(given, _resolve_device(params["device"]))
    return frobenius_cosine(apply_alignment_projection(v, delta, norm), delta)


def _full_edit(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    """``W_A + C·ΔW`` where the weight is chosen (by rank, or similarity ≤ threshold)."""
    v, norm, w_a, delta = _oriented_update(given, _resolve_device(params["device"]))
    projected = apply_alignment_projection(v, delta, norm)
    similarity = frobenius_cosine(projected, delta)
    chosen = given.chosen
    if chosen is None:
        chosen = similarity <= _rule(params)["threshold"]
    stats = {"similarity": similarity, "projected": bool(chosen)}
    if not chosen:
        return Edit(given.finetuned, stats)
    return Edit(w_a + (projected.T if given.transposed else projected), stats)


def _rule(params: Mapping[str, Any]) -> dict[str, Any]:
    return check_selection(params["threshold"], params["num_layers"])


def _choose(scores: Mapping[str, float], params: Mapping[str, Any]) -> set[str]:
    names = list(scores)
    picked = _select([scores[n] for n in names], _rule(params))
    return {n for n, keep in zip(names, picked, strict=True) if keep}


def _full_card(params: Mapping[str, Any], stats: Mapping[str, Any]) -> tuple[str, str]:
    layers = [LayerSimilarity(n, s["similarity"], s["projected"]) for n, s in stats.items()]
    return "Safe LoRA (full fine-tune)", _layers_card(layers, _rule(params))


def _full_meta(params: Mapping[str, Any], output: Any) -> dict[str, Any]:
    layers = [LayerSimilarity(n, s["similarity"], s["projected"]) for n, s in output.stats.items()]
    result = SafeLoraResult(output.path, layers, _rule(params))
    inputs = {role: value["path"] for role, value in output.meta["inputs"].items()}
    return {META_FILE: _meta(result, inputs, "full")}


# Safe LoRA on a full fine-tune, on the method contract (the CLI keeps `safelora --full`).
SAFELORA_FULL = Method(
    name="safelora-full",
    version=1,
    summary="A fully fine-tuned model whose least aligned weight updates were projected onto "
    "the alignment subspace of the aligned model.",
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
        ),
        Param(
            "num_layers", int, None, "Project the K least similar weights.", low=1, optional=True
        ),
        Param("device", str, None, "Where the products run.", optional=True, sweepable=False),
    ),
    needs=frozenset({"finetuned", "aligned", "pretrained"}),
    edit_weight=_full_edit,
    orientation=True,
    targets="linears",
    validate=lambda params: _rule(params) and None,
    card=_full_card,
    scan=_full_similarity,
    scan_when=lambda params: params["num_layers"] is not None,
    choose=_choose,
    extra_meta=_full_meta,
    cli=False,
    recipe=False,
)


def safelora_full(
    finetuned: PathLike,
    aligned: PathLike,
    pretrained: PathLike,
    out: PathLike,
    *,
    threshold: float | None = None,
    num_layers: int | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    max_shard_size: str | int = "1GB",
    device: str | torch.device | None = None,
    workers: int = 2,
) -> SafeLoraResult:
    """Write ``W_A + C·(W_F − W_A)`` in the selected decoder-block weights, ``W_F`` elsewhere.

    Run by the executor: with a threshold, one streaming pass; with ``num_layers``, a first
    pass measures every similarity (nothing kept) and a second writes.
    """
    from realignkit.execute import Sources, execute

    check_selection(threshold, num_layers)
    sources = Sources(
        finetuned=finetuned, aligned=aligned, pretrained=pretrained, allow_pickle=allow_pickle
    )
    params = {
        "threshold": threshold,
        "num_layers": num_layers,
        "device": None if device is None else str(device),
    }
    output = execute(
        SAFELORA_FULL,
        sources,
        out,
        params,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        workers=workers,
    )
    layers = [LayerSimilarity(n, s["similarity"], s["projected"]) for n, s in output.stats.items()]
    return SafeLoraResult(output.path, layers, _rule(output.params))


# --- registry recipe ---------------------------------------------------------------------------


@recipe(
    "safelora",
    params=(
        Param(
            "threshold",
            float,
            None,
            "Project the weights whose cosine similarity is at most this (default 0.5).",
            low=-1.0,
            high=1.0,
            optional=True,
            safer="higher",
            search=(-1.0, 1.0),
        ),
        Param(
            "num_layers", int, None, "Project the K least similar weights.", low=1, optional=True
        ),
    ),
    paper={"threshold": 0.5},  # the Safe LoRA recipe's default threshold
    sweep_grid={"threshold": [0.3, 0.5, 0.7]},
)
def safelora_recipe(job: RealignJob, out: Path) -> Realigned:
    """Safe LoRA on ``job.adapter`` (output: a projected adapter on ``job.aligned``) or, for a
    full fine-tune ``job.finetuned``, on its delta (output: a model folder).

    ``params``: ``threshold`` (default 0.5) or ``num_layers``.
    """
    if job.pretrained is None:
        raise RealignError("Safe LoRA needs the pre-trained model the aligned model came from")
    threshold = job.params.get("threshold")
    num_layers = job.params.get("num_layers")
    rule = {
        "threshold": None if threshold is None else float(threshold),
        "num_layers": None if num_layers is None else int(num_layers),
    }
    if job.adapter is not None:
        result = safelora_adapter(
            job.adapter, job.aligned, job.pretrained, out, overwrite=job.overwrite, **rule
        )
        realigned = Realigned(model=Path(job.aligned), adapter=Path(out))
    elif job.finetuned is not None:
        result = safelora_full(
            job.finetuned, job.aligned, job.pretrained, out, overwrite=job.overwrite, **rule
        )
        realigned = Realigned(model=Path(out))
    else:
        raise RealignError("Safe LoRA needs a LoRA adapter or a fine-tuned model")
    realigned.info = {**result.selection, "projected": len(result.projected)}
    realigned.info["layers"] = len(result.layers)
    return realigned
