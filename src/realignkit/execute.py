"""The executor: the one place a declared method meets the disk.

    inputs (paths) ─ open once ─ validate layouts once ─ stream tensor by tensor ─┐
                                                                                   │
    method.edit_weight(WeightInputs) / method.edit_layer(LayerInputs)  ◀──────────┘
                                                                                   │
    check (finite, dtype = the fine-tuned tensor's) ─ shards (atomic) ─ card ─ realignkit.json

*Weight* methods stream: a few tensors in memory whatever the model size, read ahead by a
reader thread, computed by a thread pool and written behind by a writer thread
(:mod:`realignkit.checkpoint.stream`); an optional first pass scores every weight for one
global choice. A method declared ``adapter_form`` and given a LoRA adapter writes an adapter
(same keys and config, new B factors) instead of a model. *Layer* methods run a model (the
aligned one, or θ_F) on their data block after block
(:func:`realignkit.calib.hessian.edit_blockwise`), hand each linear layer's Hessian to the
method, put the edited weight back into the running model (later blocks see it) and write it;
a setting that needs no Hessian visits the layers without running anything, and an optional
``prepare`` pass streams every layer first (IRR's global ranking). A method that reads the
*unedited aligned* model (``sequential=False``, ``runs="aligned"``) gets the same Hessians
whatever the fine-tune: given a ``hessian_cache`` folder they are saved there block by block,
and a later run on the same aligned model and data reads them instead of running the model.

Every output carries the same metadata file, ``realignkit.json``
(:func:`realignkit.checkpoint.card.write_documents`): the method and its version, the
realignkit version, every parameter, every input with its fingerprint, and the method's
statistics per edited weight. The executor knows the contract (:mod:`realignkit.contract`)
and no method: method modules stand above it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    FinetunedWeights,
    FisherScores,
    SafetyVector,
    check_same_layout,
    ensure_finite,
)
from realignkit.checkpoint.card import described, write_documents
from realignkit.checkpoint.stream import map_ordered
from realignkit.checkpoint.writer import TensorSpec
from realignkit.contract import DATA_INPUTS, Edit, LayerInputs, Method, WeightInputs
from realignkit.errors import RealignError
from realignkit.ops.selection import is_selected, parse_include, tensor_kind

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass
class Sources:
    """Where a method's inputs are; each method reads those it declared."""

    finetuned: PathLike | None = None
    base: PathLike | None = None
    adapter: PathLike | None = None
    safety_vector: PathLike | None = None
    aligned: PathLike | None = None
    pretrained: PathLike | None = None
    safety_finetune: PathLike | None = None
    safety_adapter: PathLike | None = None  # a LoRA adapter on --aligned, instead
    safety_data: PathLike | None = None
    fisher: PathLike | None = None  # a folder from `realignkit fisher`
    calibration: PathLike | None = None  # downstream-task data
    allow_pickle: bool = False


@dataclass
class Output:
    """What the executor wrote: the folder, the parameters, and per-weight statistics."""

    path: Path
    method: str
    params: dict[str, Any]
    edited: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    form: str = "model"  # or "adapter": a LoRA adapter to load on the aligned model


def sources_of(weights: FinetunedWeights) -> Sources:
    """The paths behind opened fine-tuned weights (the Python API accepts either)."""
    return Sources(
        finetuned=weights.full.dir if weights.full is not None else None,
        base=weights.base.dir if weights.base is not None else None,
        adapter=weights.adapter.dir if weights.adapter is not None else None,
    )


_MISSING = {
    "finetuned": "give the fine-tuned model (--finetuned), or --base with --adapter",
    "base": "needs --base, the model the fine-tune started from",
    "safety_vector": "needs --safety-vector (from `realignkit safety-vector`)",
    "aligned": "needs --aligned, the safety-aligned model",
    "pretrained": "needs --pretrained, the model the aligned one was aligned from",
    "safety_finetune": "needs --safety-model (or --safety-adapter): the aligned model "
    "fine-tuned on a small safety set (`realignkit finetune` makes it)",
    "safety_data": "needs --safety-data: harmful prompts with safe responses",
    "fisher": "needs --fisher (from `realignkit fisher`)",
    "calibration": "needs --calibration data",
}


def _check_present(method: Method, sources: Sources, params: Mapping[str, Any]) -> set[str]:
    """The inputs this run reads; a one-line error for the first one missing."""
    needed = set(method.inputs_needed(params)) | {"finetuned"}
    given = {
        "finetuned": sources.finetuned is not None or sources.adapter is not None,
        "base": sources.base is not None,
        "safety_vector": sources.safety_vector is not None,
        "aligned": sources.aligned is not None,
        "pretrained": sources.pretrained is not None,
        "safety_finetune": sources.safety_finetune is not None
        or sources.safety_adapter is not None,
        "safety_data": sources.safety_data is not None,
        "fisher": sources.fisher is not None,
        "calibration": sources.calibration is not None,
    }
    conditional = method.needs_when(params)
    for need in ["finetuned", *sorted(needed - {"finetuned"})]:
        if not given[need]:
            if need in conditional:
                raise RealignError(conditional[need])
            text = _MISSING[need]
            raise RealignError(text if need == "finetuned" else f"{method.name} {text}")
    return needed


def default_edits(name: str, ndim: int, floating: bool, params: Mapping[str, Any]) -> bool:
    """The decoder blocks' 2-D weights, plus the kinds of a declared ``include`` parameter."""
    return is_selected(name, ndim, parse_include(params.get("include")), floating)


def checkpoint_name(param_name: str, available: Any, base_prefix: str) -> str | None:
    """The checkpoint's name of a model parameter (some checkpoints omit the base prefix)."""
    if param_name in available:
        return param_name
    prefix = f"{base_prefix}." if base_prefix else ""
    if prefix and param_name.startswith(prefix) and param_name[len(prefix) :] in available:
        return param_name[len(prefix) :]
    return None


def _skeleton(folder: Path) -> torch.nn.Module:
    """The model's modules without weights (meta device): its blocks and linear layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise RealignError(f"cannot read the model config in {str(folder)!r}: {err}") from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def linear_orientations(weights: FinetunedWeights) -> dict[str, bool]:
    """Checkpoint name of each decoder-block linear weight → stored ``(in, out)`` (Conv1D)."""

    model = _skeleton(weights.support_dirs[0])
    return {name: layer.transposed for layer, name in linear_checkpoint_names(model, weights)}


def linear_checkpoint_names(model: Any, weights: FinetunedWeights) -> list[tuple[Any, str]]:
    """Each decoder-block linear layer of ``model`` with its weight's checkpoint name."""
    from realignkit.calib.blocks import decoder_linears

    prefix = getattr(model, "base_model_prefix", "")
    found = []
    for layer in decoder_linears(model):
        name = checkpoint_name(layer.weight_name, weights, prefix)
        if name is None:
            raise RealignError(
                f"weight {layer.weight_name!r} of the model is missing from the fine-tuned "
                "checkpoint"
            )
        found.append((layer, name))
    return found


class _Opened:
    """The opened inputs of one run (closed together)."""

    def __init__(self, method: Method, sources: Sources, needed: set[str], stack: ExitStack):
        pickle = sources.allow_pickle
        self._needed = needed
        base = sources.base if ("base" in needed or sources.adapter is not None) else None
        if method.kind == "layer" and sources.adapter is not None and base is None:
            base = sources.aligned
        if base is None and sources.base is not None:
            base = sources.base  # given anyway: FinetunedWeights checks it matches θ_F
        self.weights = stack.enter_context(
            FinetunedWeights(
                sources.finetuned, base=base, adapter=sources.adapter, allow_pickle=pickle
            )
        )
        self.safety_vector = None
        if "safety_vector" in needed:
            self.safety_vector = stack.enter_context(SafetyVector(sources.safety_vector))
        self.readers: dict[str, Any] = {}
        for role, what in (("aligned", "aligned model"), ("pretrained", "pre-trained model")):
            if role in needed:
                self.readers[role] = stack.enter_context(
                    CheckpointReader(getattr(sources, role), allow_pickle=pickle, what=what)
                )
        if "safety_finetune" in needed:
            if sources.safety_adapter is not None:
                aligned = sources.aligned if sources.aligned is not None else base
                if aligned is None:
                    raise RealignError(
                        "--safety-adapter needs --aligned, the model it was trained on"
                    )
                safety = FinetunedWeights(base=aligned, adapter=sources.safety_adapter)
            else:
                safety = FinetunedWeights(sources.safety_finetune, allow_pickle=pickle)
            safety.what = "safety fine-tune"
            self.readers["safety_finetune"] = stack.enter_context(safety)
        self.fisher = None
        if "fisher" in needed:
            self.fisher = stack.enter_context(FisherScores(sources.fisher))  # type: ignore[arg-type]
        self.fisher_names: dict[str, str] = {}  # checkpoint name → name in the Fisher scores

    def weight_inputs(
        self, name: str, theta_f: torch.Tensor, transposed: bool = False, lora: Any = None
    ) -> WeightInputs:
        """Every declared input of one weight, as stored (orientation, dtype), on the CPU."""
        sv, fisher = self.safety_vector, self.fisher_names.get(name)
        return WeightInputs(
            name,
            theta_f,
            base=self.weights.get_base(name) if "base" in self._needed else None,
            safety_vector=sv.get(name, dtype=None) if sv is not None and name in sv else None,
            fisher=self.fisher.get(fisher) if self.fisher is not None and fisher else None,
            transposed=transposed,
            lora=lora,
            **{role: reader.get(name) for role, reader in self.readers.items()},
        )

    def describe(self, sources: Sources) -> dict[str, dict[str, str]]:
        """Every input's path and fingerprint, for the metadata and the card."""
        paths: dict[str, Any] = dict(self.weights.describe())
        if self.weights.full is not None and self.weights.base is not None:
            paths["base"] = str(self.weights.base.dir)
        if self.safety_vector is not None:
            paths["safety_vector"] = str(self.safety_vector.dir)
        if self.fisher is not None:
            paths["fisher"] = str(self.fisher.dir)
        for role, reader in self.readers.items():
            if isinstance(reader, FinetunedWeights):
                for key, value in reader.describe().items():
                    paths[f"safety_{key}" if key != "finetuned" else role] = value
            else:
                paths[role] = str(reader.dir)
        for role in DATA_INPUTS:
            data = getattr(sources, role)
            if data is not None and role in self._needed:
                paths[role] = str(Path(data).expanduser().resolve())
        return described(paths)


def _validate_weight_inputs(opened: _Opened, names: list[str]) -> None:
    """Every input holds every edited tensor with the fine-tuned model's shape (checked once)."""
    weights, sv = opened.weights, opened.safety_vector
    if sv is not None:
        if sv.architecture != weights.architecture and "unknown" not in (
            sv.architecture,
            weights.architecture,
        ):
            raise RealignError(
                f"the safety vector was made for a {sv.architecture}, the fine-tuned "
                f"model is a {weights.architecture}"
            )
        # every tensor the safety vector edits is in θ_F, same shape, same vocabulary
        check_same_layout(sv, weights)
        for name in names:
            if name not in sv and not sv.is_lowrank:
                raise RealignError(f"tensor {name!r} is missing from the safety vector {sv.dir}")
    if weights.full is not None and weights.base is not None:
        check_same_layout(weights.full, weights.base, names)
    for reader in opened.readers.values():
        check_same_layout(weights, reader, names)


def _checked(name: str, edit: Edit, like: torch.Tensor) -> torch.Tensor:
    """The method's tensor in the fine-tuned tensor's dtype, shape checked, finite."""
    tensor = edit.tensor
    if tuple(tensor.shape) != tuple(like.shape):
        raise RuntimeError(
            f"method returned shape {tuple(tensor.shape)} for {name!r}, expected "
            f"{tuple(like.shape)}"
        )
    tensor = tensor.to("cpu", like.dtype)
    ensure_finite(tensor, name, "the result")  # after the cast: what would be written
    return tensor


def _card_and_meta(
    writer: CheckpointWriter,
    method: Method,
    params: dict[str, Any],
    inputs: dict[str, dict[str, str]],
    output: Output,
    extra: Mapping[str, Any],
) -> None:
    """The output's card and ``realignkit.json`` (:func:`write_documents`), then the method's
    own files."""
    if method.report is not None:
        extra = {**extra, **method.report(params, output.stats)}
    title, body = method.card(params, output.stats) if method.card else (method.name, "")
    # an adapter is loaded on its base: the card says so, as PEFT's own cards do
    adapter = output.form == "adapter"
    output.meta = write_documents(
        writer,
        method=method.name,
        version=method.version,
        summary=method.summary,
        parameters={p.name: params[p.name] for p in method.params},
        inputs=inputs,
        totals=extra,
        edited=len(output.edited),
        copied=len(output.copied),
        weights=output.stats,
        title=title,
        body=body,
        card_settings={
            "tensors edited": len(output.edited),
            "tensors copied unchanged": len(output.copied),
            "edited tensor kinds": ", ".join(sorted({tensor_kind(n, 2) for n in output.edited})),
        },
        base_model=(inputs["base"] if adapter else inputs.get("finetuned", {})).get("path"),
        tags=("peft", "lora") if adapter else (),
        library_name="peft" if adapter else "transformers",
    )
    if method.extra_meta is not None:
        for filename, content in method.extra_meta(params, output).items():
            writer.write_json(filename, content)


def execute(
    method: Method,
    sources: Sources,
    out: PathLike,
    params: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    workers: int = 2,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    hessian_cache: PathLike | None = None,
) -> Output:
    """Run ``method`` on ``sources`` with ``params`` and write the re-aligned model to ``out``.

    ``hessian_cache``: a folder where a method that runs the unedited aligned model keeps its
    Hessians for later runs on other fine-tunes (fp32, (in, in) per input group: 0.4 GB for
    SmolLM2-135M, ~20 GB for a 7B model); None: nothing is cached.

    Everything is checked before anything is written: a bad parameter, a missing input or a
    layout mismatch ends with a one-line :class:`RealignError` and no output.
    """
    resolved = method.resolve(params or {})
    needed = _check_present(method, sources, resolved)
    with ExitStack() as stack:
        opened = _Opened(method, sources, needed, stack)
        if method.kind == "weight":
            return _run_weights(
                method, opened, sources, resolved, needed, out, overwrite, max_shard_size, workers
            )
        return _run_layers(
            method,
            opened,
            sources,
            resolved,
            out,
            overwrite,
            max_shard_size,
            device,
            dtype,
            progress,
            hessian_cache,
        )


def _run_weights(
    method: Method,
    opened: _Opened,
    sources: Sources,
    params: dict[str, Any],
    needed: set[str],
    out: PathLike,
    overwrite: bool,
    max_shard_size: str | int,
    workers: int,
) -> Output:
    weights = opened.weights
    adapter = weights.adapter if method.adapter_form else None
    # Whole tensor sets first: a weight missing from any input is named with its file before
    # anything is derived from the model's structure.
    aligned = opened.readers.get("aligned")
    if aligned is not None:
        check_same_layout(weights, aligned, same_set=True)
        for role, reader in opened.readers.items():
            if role != "aligned":
                check_same_layout(aligned, reader)
    if adapter is not None:
        # An adapter in, an adapter out: its weights are edited through their LoRA factors.
        selected = adapter.target_weights()
        factors = {name: adapter.factors(name) for name in selected}
        orientation = {name: f.transpose for name, f in factors.items()}
    else:
        selected, orientation = _selected_weights(method, weights, params)
    if not selected:
        raise RealignError("no tensor of the fine-tuned model is selected for editing")
    _validate_weight_inputs(opened, selected)
    assert method.edit_weight is not None
    edit_weight = method.edit_weight

    def inputs_of(name: str) -> WeightInputs:
        lora = factors[name] if adapter is not None else None
        return opened.weight_inputs(name, weights.get(name), orientation.get(name, False), lora)

    scores: dict[str, float] = {}
    chosen: set[str] | None = None
    if method.scan is not None and method.scan_when(params):
        # First pass: a score per edited weight (nothing kept), then one global choice.
        scan = method.scan
        for name, score in map_ordered(
            lambda given: scan(given, params),
            selected,
            load=inputs_of,
            workers=workers,
            desc=f"{method.name} (scores)",
            weights=weights.nbytes,
        ):
            scores[name] = score
        assert method.choose is not None
        chosen = method.choose(scores, params)

    # output tensor → the weight it edits (None: copied); an adapter's edits are its B factors
    if adapter is not None:
        edits = {adapter.lora_keys(name)[1]: name for name in selected}
        keys, read, size = adapter.keys, adapter.raw, None
    else:
        edits = {name: name for name in selected}
        keys, read, size = weights.names, weights.get, weights.nbytes

    def load(key: str) -> tuple[str, torch.Tensor, WeightInputs | None]:
        """Every input of one output tensor, read (in the reader thread: ahead of compute)."""
        stored = read(key)
        name = edits.get(key)
        if name is None:
            return key, stored, None
        given = (
            inputs_of(name)
            if adapter is not None
            else opened.weight_inputs(name, stored, orientation.get(name, False))
        )
        if chosen is not None:
            given.score, given.chosen = scores[name], name in chosen
        return key, stored, given

    def realign(
        loaded: tuple[str, torch.Tensor, WeightInputs | None],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        key, stored, given = loaded
        if given is None:
            return {key: stored}, None
        edit = edit_weight(given, params)
        return {key: _checked(key, edit, stored)}, edit.stats

    output = Output(Path(out), method.name, params, form="adapter" if adapter else "model")
    inputs = opened.describe(sources)
    if adapter is not None:
        # PEFT loads one adapter_model.safetensors: never shard it
        writer = CheckpointWriter(
            out, overwrite=overwrite, max_shard_size=1 << 60, weights_name="adapter_model"
        )
    else:
        plan = [TensorSpec(n, tuple(weights.shape(n)), weights.dtype(n)) for n in keys]
        writer = CheckpointWriter(
            out, overwrite=overwrite, max_shard_size=max_shard_size, plan=plan
        )
    with writer:
        for key, stats in writer.stream(
            realign, keys, workers=workers, desc=method.name, weights=size, load=load
        ):
            if key in edits:
                output.edited.append(edits[key])
                if stats:
                    output.stats[edits[key]] = stats
            else:
                output.copied.append(key)
        if adapter is not None:
            writer.copy_support_files(adapter.dir)
            shutil.copy2(adapter.dir / "adapter_config.json", writer.path / "adapter_config.json")
        else:
            writer.copy_support_files(*weights.support_dirs)
        _card_and_meta(writer, method, params, inputs, output, _summary(output))
    return output


def _selected_weights(
    method: Method, weights: FinetunedWeights, params: Mapping[str, Any]
) -> tuple[list[str], dict[str, bool]]:
    """The weights a weight method edits, and each one's orientation where it asked for it."""
    orientation = linear_orientations(weights) if method.orientation else {}
    if method.targets == "linears":
        orientation = orientation or linear_orientations(weights)
        return [n for n in weights.names if n in orientation], orientation
    selected = [
        n
        for n in weights.names
        if default_edits(n, len(weights.shape(n)), weights.dtype(n).is_floating_point, params)
    ]
    return selected, orientation


def _summary(output: Output) -> dict[str, Any]:
    """Totals of the per-weight statistics that are counts or flags (for the card)."""
    totals: dict[str, Any] = {}
    for stats in output.stats.values():
        for key, value in stats.items():
            if isinstance(value, bool):
                totals[f"weights {key}"] = totals.get(f"weights {key}", 0) + int(value)
            elif isinstance(value, int):
                totals[f"{key} (total)"] = totals.get(f"{key} (total)", 0) + value
    return totals


# --- layer methods: the aligned model runs on the method's data, block after block -----------


def safety_batches(
    data: PathLike, tokenizer: Any, params: Mapping[str, Any]
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Chat-formatted, right-padded batches of (prompt, safe response) rows, and the tokens."""
    from realignkit.calib.text import encode_chat, make_batches, pad_id_of
    from realignkit.data import read_prompts, read_rows

    rows = read_rows(data)
    if not rows:
        raise RealignError(f"safety data {str(data)!r} hold no rows")
    response = "response" if "response" in rows[0] else None
    if response is None:
        raise RealignError(
            f"safety data {str(data)!r} need a 'response' column: the safe answers whose "
            "activations the method keeps"
        )
    picked = read_prompts(
        data, response_column=response, limit=params["num_samples"], seed=params["seed"]
    )
    encoded = [
        encode_chat(
            tokenizer, str(r["prompt"]), str(r["response"]), max_length=params["max_length"]
        )
        for r in picked
    ]
    encoded = [e for e in encoded if e.ids]
    tokens = sum(len(e.ids) for e in encoded)
    if tokens == 0:
        raise RealignError(f"safety data {str(data)!r} give no tokens")
    return make_batches(encoded, params["batch_size"], pad_id_of(tokenizer)), tokens


def _run_layers(
    method: Method,
    opened: _Opened,
    sources: Sources,
    params: dict[str, Any],
    out: PathLike,
    overwrite: bool,
    max_shard_size: str | int,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    progress: bool,
    hessian_cache: PathLike | None = None,
) -> Output:
    from realignkit.modeling import default_device

    weights, aligned = opened.weights, opened.readers.get("aligned")
    if aligned is not None:
        check_same_layout(weights, aligned)
    compute = torch.device(device) if device is not None else default_device()
    runs_model = method.runs_model(params)
    # Everything is checked on the model's skeleton before a weight is loaded or written.
    skeleton = _skeleton(weights.support_dirs[0])
    prefix = getattr(skeleton, "base_model_prefix", "")
    opened.fisher_names = _fisher_names(opened.fisher, weights, prefix)
    layers = _edited_layers(method, opened, skeleton, params)
    _validate_weight_inputs(opened, [name for _, name in layers])
    batches: list[dict[str, torch.Tensor]] = []
    tokens = 0
    if runs_model:
        data = getattr(sources, method.data)
        tokenizer = _tokenizer(method, opened)
        make = method.batches or _safety_rows
        batches = make(data, tokenizer, params, getattr(skeleton.config, "vocab_size", None))
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        widest = max(layers, key=lambda pair: pair[0].in_features)
        (method.check_tokens or _enough_tokens)(
            tokens, (widest[1], widest[0].in_features), params, data
        )

    def given(layer: Any, name: str, theta_f: torch.Tensor, hessian: Any) -> LayerInputs:
        return LayerInputs(
            name,
            aligned=None
            if aligned is None
            else layer.to_kernel(aligned.get(name)).to(compute, torch.float32),
            finetuned=layer.to_kernel(theta_f).to(compute, torch.float32),
            hessian=hessian,
            stored=opened.weight_inputs(name, theta_f, layer.transposed),
            device=compute,
        )

    prepared = None
    if method.prepare is not None and method.prepare_when(params):

        def stream() -> Iterator[LayerInputs]:
            return (given(ly, n, weights.get(n), None) for ly, n in layers)

        prepared = method.prepare(stream, params)
    assert method.edit_layer is not None
    edit_layer = method.edit_layer
    output = Output(Path(out), method.name, params)
    inputs = opened.describe(sources)
    writer = CheckpointWriter(out, overwrite=overwrite, max_shard_size=max_shard_size)
    with writer:

        def edit(layer: Any, name: str, hessian: torch.Tensor | None) -> torch.Tensor:
            theta_f = weights.get(name)
            inputs_of_layer = given(layer, name, theta_f, hessian)
            inputs_of_layer.prepared = prepared
            edit = edit_layer(inputs_of_layer, params)
            stored = _checked(name, Edit(layer.from_kernel(edit.tensor)), theta_f)
            writer.add(name, stored)
            output.edited.append(name)
            output.stats[name] = edit.stats
            return stored

        by_layer = {layer.name: name for layer, name in layers}
        cache = None
        if runs_model and hessian_cache is not None and _hessians_reusable(method):
            cache = HessianCache(
                Path(hessian_cache), _hessian_key(opened, batches, by_layer, compute, dtype)
            )
        if cache is not None and cache.complete:
            log.info("Hessians of the aligned model read from %s", cache.folder)
            skeleton_layer = {layer.name: layer for layer, _ in layers}
            for names, hessians in cache.blocks(compute):
                for layer_name in names:
                    edit(skeleton_layer[layer_name], by_layer[layer_name], hessians[layer_name])
        elif runs_model:
            from realignkit.calib.hessian import edit_blockwise

            model = _running_model(method, opened, compute, dtype)

            def edit_block(index: int, running: list, hessians: dict[str, torch.Tensor]) -> None:
                if cache is not None:
                    cache.save_block(index, [layer.name for layer in running], hessians)
                for layer in running:
                    stored = edit(layer, by_layer[layer.name], hessians[layer.name])
                    if method.sequential:
                        layer.set_weight(layer.to_kernel(stored))

            try:
                edit_blockwise(
                    model,
                    batches,
                    edit_block,
                    device=compute,
                    select=lambda layer: layer.name in by_layer,
                    progress=progress,
                )
            except BaseException:
                if cache is not None:
                    cache.discard()
                raise
            if cache is not None:
                cache.finish()
            del model
        else:
            from tqdm.auto import tqdm

            for layer, name in tqdm(layers, desc=method.name, disable=not progress):
                edit(layer, name, None)
        edited = set(output.edited)
        rest = [name for name in weights.names if name not in edited]
        for name, _ in writer.stream(
            lambda named: (dict([named]), None), rest, load=lambda n: (n, weights.get(n))
        ):
            output.copied.append(name)
        writer.copy_support_files(*weights.support_dirs)
        extra = {f"{method.data.replace('_', ' ')} tokens": tokens} if runs_model else {}
        _card_and_meta(writer, method, params, inputs, output, {**extra, **_summary(output)})
    return output


def _safety_rows(data: PathLike, tokenizer: Any, params: Mapping[str, Any], _vocab: Any) -> list:
    return safety_batches(data, tokenizer, params)[0]


def _enough_tokens(tokens: int, widest: tuple[str, int], _params: Any, _data: Any) -> None:
    """Fewer token positions than a layer's inputs leave its Hessian singular: refuse."""
    if tokens < widest[1]:
        raise RealignError(
            f"safety data give {tokens} tokens, fewer than the {widest[1]} inputs of the widest "
            "layer: use more --num-samples or a longer --max-length"
        )


def _edited_layers(
    method: Method, opened: _Opened, skeleton: torch.nn.Module, params: Mapping[str, Any]
) -> list[tuple[Any, str]]:
    """The decoder-block linear layers a layer method edits, with their checkpoint names: those
    of a declared ``modules`` parameter, and only those the Fisher scores cover when the method
    reads them (the scores were computed for the layers they are meant to steer)."""
    from realignkit.calib.blocks import select_modules

    modules = params.get("modules")
    found = linear_checkpoint_names(skeleton, opened.weights)
    chosen = {id(ly) for ly in select_modules([ly for ly, _ in found], modules)}
    layers = [(ly, name) for ly, name in found if id(ly) in chosen]
    if opened.fisher is not None:
        missing = [name for _, name in layers if name not in opened.fisher_names]
        if modules and missing:
            raise RealignError(
                f"no Fisher scores for {missing[0]!r}; recompute them with "
                "`realignkit fisher --modules ...` or choose other --modules"
            )
        layers = [(ly, name) for ly, name in layers if name in opened.fisher_names]
    if not layers:
        raise RealignError("no weight to edit: the Fisher scores cover none of the chosen layers")
    return layers


def _fisher_names(
    fisher: FisherScores | None, weights: FinetunedWeights, prefix: str
) -> dict[str, str]:
    """Checkpoint name → Fisher tensor name, every Fisher tensor checked against θ_F."""
    if fisher is None:
        return {}
    found = {}
    for fname in fisher.names:
        name = checkpoint_name(fname, weights, prefix)
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
        found[name] = fname
    return found


def _tokenizer(method: Method, opened: _Opened) -> Any:
    """The running model's tokenizer (an adapter's own tokens included), padding right."""
    from realignkit.modeling import load_tokenizer

    weights = opened.weights
    if method.runs == "aligned":
        return load_tokenizer(opened.readers["aligned"].dir, padding_side="right")
    adapter = weights.adapter.dir if weights.adapter is not None else None
    return load_tokenizer(weights.support_dirs[0], adapter=adapter, padding_side="right")


def _hessians_reusable(method: Method) -> bool:
    """Whether a method's Hessians depend on the aligned model and the data alone: it runs the
    aligned model and never puts its edits back (later blocks see unedited inputs)."""
    return method.runs == "aligned" and not method.sequential


def _hessian_key(
    opened: _Opened,
    batches: list[dict[str, torch.Tensor]],
    by_layer: Mapping[str, str],
    compute: torch.device,
    dtype: torch.dtype | None,
) -> str:
    """A hash of what the Hessians are made from: the aligned model's fingerprint, the token
    batches themselves, the layers, and the device kind and dtype the model runs in."""
    import hashlib
    import json

    from realignkit.checkpoint.fingerprint import fingerprint
    from realignkit.modeling import default_dtype

    h = hashlib.sha256()
    running_dtype = dtype or default_dtype(compute)
    head = [fingerprint(opened.readers["aligned"].dir), sorted(by_layer), compute.type]
    h.update(json.dumps(head + [str(running_dtype)]).encode())
    for batch in batches:
        for key in sorted(batch):
            h.update(key.encode())
            h.update(batch[key].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


class HessianCache:
    """The Hessians of one (aligned model, data) pair: ``hessians-KEY/block-NNNN.safetensors``,
    one file per decoder block (a tensor per input group; the metadata names each layer's), and
    ``done.json`` listing the blocks once all are written. It is filled in a temporary folder
    renamed into place at the end, so a reader sees all of it or nothing."""

    def __init__(self, root: Path, key: str) -> None:
        self.folder = root / f"hessians-{key}"
        self._tmp: Path | None = None
        self._blocks: list[int] = []

    @property
    def complete(self) -> bool:
        return (self.folder / "done.json").is_file()

    def save_block(
        self, index: int, names: list[str], hessians: Mapping[str, torch.Tensor]
    ) -> None:
        import json

        from safetensors.torch import save_file

        from realignkit.checkpoint.output import remove_stale_temporaries, temporary_name

        if self._tmp is None:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.folder)  # a killed run's half (up to ~20 GB at 7B)
            self._tmp = temporary_name(self.folder)
            self._tmp.mkdir()
        stored: dict[str, torch.Tensor] = {}
        alias: dict[str, str] = {}
        by_tensor: dict[int, str] = {}
        for name in names:  # layers that share an input share one tensor: stored once
            tensor = hessians[name]
            first = by_tensor.setdefault(id(tensor), name)
            alias[name] = first
            if first == name:
                stored[name] = tensor.detach().cpu().contiguous()
        meta = {"order": json.dumps(names), "alias": json.dumps(alias)}
        save_file(stored, str(self._tmp / f"block-{index:04d}.safetensors"), metadata=meta)
        self._blocks.append(index)

    def finish(self) -> None:
        from realignkit.checkpoint.output import write_json_atomic

        if self._tmp is None:
            return
        write_json_atomic(self._tmp / "done.json", {"blocks": self._blocks})
        try:
            os.replace(self._tmp, self.folder)
        except OSError:  # another run finished the same Hessians first: keep its copy
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def discard(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def blocks(self, device: torch.device) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
        """Each block's layer names (in the order they were edited) and their Hessians."""
        import json

        from safetensors import safe_open

        done = json.loads((self.folder / "done.json").read_text(encoding="utf-8"))
        for index in done["blocks"]:
            path = self.folder / f"block-{index:04d}.safetensors"
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata()
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            alias = json.loads(meta["alias"])
            yield json.loads(meta["order"]), {n: tensors[a] for n, a in alias.items()}


def _running_model(
    method: Method, opened: _Opened, compute: torch.device, dtype: torch.dtype | None
) -> torch.nn.Module:
    """The model a layer method runs, on the CPU (blocks visit ``compute`` one at a time):
    the aligned model, or θ_F (an adapter's θ_B + scale·B·A put into every adapted tensor).
    Activations in bf16 on accelerators (Hessians still accumulate in fp32), fp32 on the CPU."""
    from realignkit.modeling import default_dtype, load_causal_lm

    weights = opened.weights
    dtype = dtype or default_dtype(compute)
    if method.runs == "aligned":
        return load_causal_lm(opened.readers["aligned"].dir, dtype=dtype, device="cpu")
    model = load_causal_lm(
        weights.support_dirs[0], dtype=dtype, device="cpu", allow_pickle=weights.allow_pickle
    )
    if weights.adapter is not None:
        prefix = getattr(model, "base_model_prefix", "")
        adapted = set(weights.adapter.target_weights()) | set(weights.adapter.full_tensors())
        for param_name, param in model.named_parameters():
            name = checkpoint_name(param_name, adapted, prefix)
            if name is not None:
                with torch.no_grad():
                    param.copy_(weights.get(name).to(param.dtype))
    return model
