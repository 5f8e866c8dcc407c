"""What a command will read, write and hold, from ``config.json`` and the shapes alone.

``realignkit plan COMMAND ...`` answers before anything heavy runs: the bytes each stage reads
and writes, its peak host memory and its peak memory on each device, and whether that fits a
``--max-memory``. Nothing is loaded: checkpoints give their safetensors headers (names,
dtypes, shapes), models their configs, built on the ``meta`` device when a module structure
is needed (the decoder blocks, accelerate's placement).

Where the figures come from:

* **streaming stages** (the weight methods, ``safety-vector``, IRR's removal) follow the
  executor's pipeline exactly: ``workers`` threads compute ahead of the writer with at most
  ``window`` results pending, so at any moment the tensors in memory are a window of
  consecutive tensors. Each method declares its own working memory per entry
  (:attr:`~realignkit.contract.Method.memory`: scratch buffers a worker keeps, plus what
  one computation allocates and frees); which inputs a stage reads comes from the method's
  declared inputs. Bytes read and written are the tensors' byte ranges plus the headers.
* **model stages** (``fisher``, ``eval``, ``finetune``, the calibration passes) hold the model
  in its compute dtype plus what the pass adds: Fisher's fp32 accumulators and one gradient
  at a time, the activations a backward pass keeps, the logits, a generation's KV cache,
  the optimizer state of a fine-tune. With ``--device-map`` the weights are placed by
  accelerate's own ``infer_auto_device_map`` on the meta model, as the loading will place
  them.

Every peak is an upper bound for the stated settings (sequences as long as ``--max-length``;
``eval``'s prompts as long as the longest one its benchmarks hold, read with the tokenizer);
the process's fixed cost (the interpreter, torch, transformers) is measured in the planning
process itself after the same imports (:func:`fixed_cost`). ``tests/test_plan.py`` checks the
figures against peaks and byte counts measured on the tiny models and on SmolLM2-135M, and
the model stages on a small Llama. ``--dry-run`` on each planned command prints this plan
(:func:`realignkit.cli.plan.with_dry_run`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realignkit.errors import RealignError

GIB = 2**30
# What a run adds to its imports besides tensors: worker threads' stacks and malloc arenas,
# file buffers, the card and metadata (measured: 1.5-3 MiB on SmolLM2's streaming commands).
RUNTIME_BYTES = 16 * 2**20
WINDOW = 4  # results pending in checkpoint.stream.map_ordered without overlap (its default)
_SIZES = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZES.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def size_bytes(text: str) -> int:
    """``70GiB`` / ``512MB`` / ``3e9`` → bytes."""
    match = re.fullmatch(r"\s*([\d.e+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = (match.group(2) if match else "").upper() or "B"
    if match is None or unit not in _SIZES:
        raise RealignError(f"cannot read size {text!r}; use e.g. 70GiB or 512MB")
    return int(float(match.group(1)) * _SIZES[unit])


_FIXED: list[int] = []  # set by plan_command(baseline=...) for the duration of one plan


def current_rss() -> int:
    """This process's resident memory now: the fixed cost a command starts from, when the
    planning process has made the same imports (``realignkit plan`` runs in the CLI)."""
    if _FIXED:
        return _FIXED[-1]
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# What each model command imports once it runs (imported by the plan before it measures
# its own resident memory, so the fixed cost it plans from includes them).
# Loading any model imports these (measured: ~170 MiB of code and data on top of the CLI).
MODEL_IMPORTS = (
    "transformers.modeling_utils",
    "transformers.generation",
    "transformers.tokenization_utils_fast",
    "accelerate",
)
COMMAND_IMPORTS = {
    "fisher": ("realignkit.calib.fisher",),
    "eval": ("realignkit.eval.runner", "realignkit.eval.generate"),
    "finetune": ("realignkit.train.finetune", "peft", "transformers.trainer"),
    "calibration": ("realignkit.execute", "realignkit.calib.hessian", "realignkit.methods.irr"),
}


def fixed_cost(command: str) -> int:
    """The resident memory a model command starts from: this process's after the command's
    own imports (:data:`COMMAND_IMPORTS`, :data:`MODEL_IMPORTS`) and one small forward and
    backward pass (torch's kernels allocate their buffers on first use), or the baseline the
    plan was given."""
    if not _FIXED:
        import importlib

        for module in (*MODEL_IMPORTS, *COMMAND_IMPORTS.get(command, ())):
            importlib.import_module(module)
        x = torch.randn(2, 4, 16, 8, requires_grad=True)
        attention = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        torch.nn.functional.linear(attention, torch.randn(8, 8)).sum().backward()
    return current_rss()


@dataclass
class Stage:
    """One stage of a command: what it reads, writes and holds at its peak."""

    name: str
    read_bytes: int = 0
    written_bytes: int = 0
    host_bytes: int = 0
    device_bytes: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    fixed_bytes: int = 0  # of host_bytes: the process's own (imports, runtime), planned from


@dataclass
class Plan:
    """A command's stages, and the limits they are checked against."""

    command: str
    stages: list[Stage]
    limits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def read_bytes(self) -> int:
        return sum(s.read_bytes for s in self.stages)

    @property
    def written_bytes(self) -> int:
        return sum(s.written_bytes for s in self.stages)

    @property
    def peak_host(self) -> int:
        return max((s.host_bytes for s in self.stages), default=0)

    def peak_device(self) -> dict[str, int]:
        peaks: dict[str, int] = {}
        for stage in self.stages:
            for device, used in stage.device_bytes.items():
                peaks[device] = max(peaks.get(device, 0), used)
        return peaks

    def problems(self) -> list[str]:
        """Every (stage, device) whose peak exceeds its limit; empty when it fits."""
        found = []
        for stage in self.stages:
            used = {"cpu": stage.host_bytes, **stage.device_bytes}
            for device, limit in self.limits.items():
                if used.get(device, 0) > limit:
                    found.append(
                        f"{stage.name}: {device} needs {_gib(used[device])}, "
                        f"--max-memory gives {_gib(limit)}"
                    )
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "read_bytes": self.read_bytes,
            "written_bytes": self.written_bytes,
            "peak_host_bytes": self.peak_host,
            "peak_device_bytes": self.peak_device(),
            "stages": [s.__dict__ for s in self.stages],
            "limits": self.limits,
            "fits": None if not self.limits else not self.problems(),
            "problems": self.problems(),
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"plan for `realignkit {self.command}` (nothing loaded: headers and config)"]
        lines.append("| stage | reads | writes | peak host | peak device | what |")
        lines.append("| --- | ---: | ---: | ---: | --- | --- |")
        for s in self.stages:
            device = ", ".join(f"{d} {_gib(b)}" for d, b in s.device_bytes.items()) or "-"
            lines.append(
                f"| {s.name} | {_gib(s.read_bytes)} | {_gib(s.written_bytes)} | "
                f"{_gib(s.host_bytes)} | {device} | {s.detail} |"
            )
        lines.append(
            f"total: reads {_gib(self.read_bytes)}, writes {_gib(self.written_bytes)}, "
            f"peak host {_gib(self.peak_host)}"
        )
        if self.limits:
            problems = self.problems()
            given = ", ".join(f"{d}={_gib(b)}" for d, b in self.limits.items())
            lines.append(
                f"fits --max-memory {given}: yes"
                if not problems
                else "does NOT fit --max-memory " + given + ":\n  " + "\n  ".join(problems)
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 4 else f"{n / 2**20:.1f} MiB"


def parse_limits(spec: str | None) -> dict[str, int]:
    """``--max-memory`` (as the heavy commands take it) → device name → bytes."""
    from realignkit.modeling import parse_max_memory

    limits = parse_max_memory(spec) or {}
    return {
        (f"cuda:{k}" if isinstance(k, int) else str(k)): size_bytes(v) for k, v in limits.items()
    }


# --- shapes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensors:
    """A checkpoint's tensors from its headers: bytes and entries per name, in file order."""

    names: tuple[str, ...]
    nbytes: Mapping[str, int]
    numel: Mapping[str, int]
    dtypes: Mapping[str, torch.dtype]
    shapes: Mapping[str, tuple[int, ...]]
    header_bytes: int  # the files' headers, read before any tensor
    folder: Path

    @property
    def total(self) -> int:
        return sum(self.nbytes.values())


def tensors_of(path: str | os.PathLike[str], what: str = "model") -> Tensors:
    from realignkit.checkpoint import CheckpointReader

    with CheckpointReader(path, what=what) as ckpt:
        names = tuple(ckpt.names)
        shapes = {n: tuple(ckpt.shape(n)) for n in names}
        headers = 0
        for f in ckpt.files:
            with f.open("rb") as fh:
                headers += 8 + int.from_bytes(fh.read(8), "little")
        return Tensors(
            names=names,
            nbytes={n: ckpt.nbytes(n) for n in names},
            numel={n: math.prod(shapes[n]) for n in names},
            dtypes={n: ckpt.dtype(n) for n in names},
            shapes=shapes,
            header_bytes=headers,
            folder=ckpt.dir,
        )


def adapter_tensors(folder: str | os.PathLike[str]) -> Tensors:
    """A PEFT adapter's tensors from the header of its ``adapter_model.safetensors``."""
    from realignkit.checkpoint.reader import read_safetensors_header

    file = Path(folder) / "adapter_model.safetensors"
    if not file.is_file():
        raise RealignError(f"plan: {str(folder)!r} has no adapter_model.safetensors")
    infos, _ = read_safetensors_header(file)
    with file.open("rb") as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")
    return Tensors(
        names=tuple(infos),
        nbytes={n: i.nbytes for n, i in infos.items()},
        numel={n: math.prod(i.shape) for n, i in infos.items()},
        dtypes={n: i.dtype for n, i in infos.items()},
        shapes={n: i.shape for n, i in infos.items()},
        header_bytes=header,
        folder=file.parent,
    )


def _support_bytes(folder: Path) -> int:
    """Config and tokenizer files the output copies (read once, written once)."""
    from realignkit.checkpoint.writer import SUPPORT_FILES

    return sum((folder / n).stat().st_size for n in SUPPORT_FILES if (folder / n).is_file())


def output_bytes(tensors: Tensors, names: Sequence[str], max_shard_size: str | int) -> int:
    """Bytes of the output shards the writer lays out for ``names`` (headers included)."""
    from realignkit.checkpoint.writer import TensorSpec, parse_size, shard_header, split_shards

    specs = [TensorSpec(n, tensors.shapes[n], tensors.dtypes[n]) for n in names]
    # no tensor at all is still one (empty) file
    shards = split_shards(specs, parse_size(max_shard_size)) or [[]]
    total = sum(len(shard_header(shard)) + sum(s.nbytes for s in shard) for shard in shards)
    return total + (200 + 80 * len(specs) if len(shards) > 1 else 0)  # the index


# --- streaming stages --------------------------------------------------------------------------


def stream_peak(
    order: Sequence[str],
    held_in: Mapping[str, int],
    held_out: Mapping[str, int],
    persistent: int,
    workers: int,
    overlap: bool | None = None,
) -> int:
    """Bytes a streaming pass holds at its worst moment (beyond the process's fixed cost).

    ``held_in[n]``: what computing ``n`` holds while it runs (its inputs and transient
    buffers); ``held_out[n]``: its result, held until written; ``persistent`` is the scratch
    the workers keep. The tensors in memory are consecutive in ``order``
    (:mod:`realignkit.checkpoint.stream`'s pipeline):

    * with ``overlap`` (default: :func:`~realignkit.checkpoint.stream.overlap_enabled`): the
      result being written, ``WRITE_BEHIND`` waiting for the writer thread and one in the
      caller's hand; ``workers`` computing (inputs and result); the ``READ_AHEAD`` loaded
      inputs waiting and the one the reader thread is loading;
    * without: ``WINDOW`` results pending plus the one being written, at most ``workers`` of
      them computing.
    """
    from realignkit.checkpoint.stream import READ_AHEAD, WRITE_BEHIND, overlap_enabled

    if not order:
        return 0
    overlap = overlap_enabled() if overlap is None else overlap
    computing = max(workers, 1)
    worst = 0
    if overlap:
        written, reading = WRITE_BEHIND + 2, READ_AHEAD + 1
        for start in range(len(order)):
            span = order[start : start + written + computing + reading]
            outs = sum(held_out[n] for n in span[: written + computing])
            running = sum(held_in[n] for n in span[written : written + computing])
            # a loaded copy-through tensor is its own result: held_in is 0 for it
            loaded = sum(max(held_in[n], held_out[n]) for n in span[written + computing :])
            worst = max(worst, outs + running + loaded)
        return worst + persistent + RUNTIME_BYTES
    span_length = (WINDOW if workers > 1 else 0) + 1
    for start in range(len(order)):
        window = order[start : start + span_length]
        outs = sum(held_out[n] for n in window)
        running = sorted((held_in[n] for n in window), reverse=True)[:computing]
        worst = max(worst, outs + sum(running))
    return worst + persistent + RUNTIME_BYTES


def stream_detail(workers: int) -> str:
    """The pipeline :func:`stream_peak` plans, in words."""
    from realignkit.checkpoint.stream import READ_AHEAD, WRITE_BEHIND, overlap_enabled

    if overlap_enabled():
        return f"{READ_AHEAD} read ahead, {workers} workers, {WRITE_BEHIND} written behind"
    return f"{workers} workers, {WINDOW} results pending"


def largest_sum(sizes: Mapping[str, int], count: int) -> int:
    """The sum of the ``count`` largest values: a worker's scratch grows to the largest
    tensor it has edited, so ``count`` workers keep at most the ``count`` largest."""
    return sum(sorted(sizes.values(), reverse=True)[: max(count, 1)])


def weight_method_stages(
    method: Any,
    inputs: Mapping[str, str | None],
    values: Mapping[str, Any],
    *,
    workers: int = 2,
    max_shard_size: str | int = "1GB",
    baseline: int | None = None,
) -> list[Stage]:
    """The streaming pass of a declared *weight* method (:mod:`realignkit.execute`)."""
    from realignkit.contract import default_memory
    from realignkit.execute import default_edits

    params = method.resolve(values)
    needed = method.inputs_needed(params)
    if inputs.get("adapter"):
        raise RealignError("plan: a LoRA fine-tune (--adapter) is not planned yet; merge it first")
    if not inputs.get("finetuned"):
        raise RealignError(f"plan {method.name}: give --finetuned")
    ft = tensors_of(str(inputs["finetuned"]), "fine-tuned model")
    others: dict[str, Tensors] = {}
    for role in sorted(needed - {"finetuned", "safety_data"}):
        path = inputs.get(role)
        if not path:
            raise RealignError(f"plan {method.name}: give --{role.replace('_', '-')}")
        others[role] = tensors_of(str(path), role)
    if method.targets == "linears":
        edited = {n for n in ft.names if len(ft.shapes[n]) == 2 and ".layers." in n}
    else:
        edited = {
            n
            for n in ft.names
            if default_edits(n, len(ft.shapes[n]), ft.dtypes[n].is_floating_point, params)
        }
    same = all(
        o.dtypes.get(n, ft.dtypes[n]) == ft.dtypes[n] for o in others.values() for n in edited
    )
    persistent_per_entry, transient_per_entry = (method.memory or default_memory)(params, same)
    piece = method.memory_piece

    def working(n: str) -> int:  # entries the method's scratch covers while it edits n
        return ft.numel[n] if piece is None else min(ft.numel[n], piece)

    held_in, held_out = {}, {}
    read = ft.header_bytes + sum(o.header_bytes for o in others.values())
    for n in ft.names:
        held_out[n] = ft.nbytes[n]
        read += ft.nbytes[n]
        if n in edited:
            extra = sum(o.nbytes.get(n, 0) for o in others.values())
            read += extra
            held_in[n] = ft.nbytes[n] + extra + int(working(n) * transient_per_entry)
        else:
            held_in[n] = 0  # the fine-tuned tensor itself is the result
    if method.scan is not None and method.scan_when(params):
        # A first pass scores every edited weight (nothing kept) before the writing pass.
        read += sum(held_in[n] - int(working(n) * transient_per_entry) for n in edited)
    biggest = max((working(n) for n in edited), default=0)
    held = stream_peak(ft.names, held_in, held_out, int(biggest * persistent_per_entry), workers)
    support = _support_bytes(ft.folder)
    fixed = current_rss() if baseline is None else baseline
    return [
        Stage(
            name=f"{method.name}: stream {len(edited)} edited + {len(ft.names) - len(edited)} "
            "copied tensors",
            read_bytes=read + support,
            written_bytes=output_bytes(ft, ft.names, max_shard_size) + support,
            host_bytes=fixed + held,
            fixed_bytes=fixed,
            detail=f"{stream_detail(workers)}; reads " + ", ".join(["finetuned", *others]),
        )
    ]


def safety_vector_stages(
    aligned: str,
    unaligned: str,
    *,
    workers: int = 2,
    max_shard_size: str | int = "1GB",
    baseline: int | None = None,
) -> list[Stage]:
    """``safety-vector`` with a dense ``--unaligned``: v = θ_A − θ_U, tensor by tensor."""
    a = tensors_of(aligned, "aligned model")
    u = tensors_of(unaligned, "unaligned model")
    # Same dtypes take torch's fused subtraction (no scratch); others two fp32 buffers.
    same = all(u.dtypes.get(n) == a.dtypes[n] for n in a.names)
    persistent = 0 if same else 8 * largest_sum(dict(a.numel), workers)
    held_in = {n: a.nbytes[n] + u.nbytes.get(n, 0) for n in a.names}
    held = stream_peak(a.names, held_in, dict(a.nbytes), persistent, workers)
    fixed = current_rss() if baseline is None else baseline
    return [  # a safety vector is not a model: no config or tokenizer files travel with it
        Stage(
            name=f"safety-vector: stream {len(a.names)} tensors",
            read_bytes=a.header_bytes + u.header_bytes + a.total + u.total,
            written_bytes=output_bytes(a, a.names, max_shard_size),
            host_bytes=fixed + held,
            fixed_bytes=fixed,
            detail=stream_detail(workers),
        )
    ]


# --- model stages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the memory of running a model depends on (from its config and headers)."""

    params: int  # entries of every weight the model holds (tied ones once)
    linear_params: dict[str, int]  # decoder-block linear weight → entries
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_dim: int  # key/value width per token per layer
    vocab: int
    file_bytes: int
    stored_dtype: torch.dtype
    meta: Any  # the model on the meta device
    attention_dropout: float = 0.0  # in training (GPT-2's attn_pdrop is 0.1, Llama's 0.0)


def model_shape(path: str | os.PathLike[str]) -> ModelShape:
    from transformers import AutoConfig, AutoModelForCausalLM

    from realignkit.calib.blocks import decoder_linears
    from realignkit.checkpoint.source import resolve_model_dir

    folder = resolve_model_dir(path)
    tensors = tensors_of(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise RealignError(f"cannot read the model config in {str(folder)!r}: {err}") from err
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
    heads = int(getattr(text, "num_attention_heads", None) or text.n_head)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    layers = int(getattr(text, "num_hidden_layers", None) or text.n_layer)
    inter = int(getattr(text, "intermediate_size", None) or getattr(text, "n_inner", 0) or 0)
    params = sum(p.numel() for p in meta.parameters())  # parameters() lists tied ones once
    linear = {layer.weight_name: layer.module.weight.numel() for layer in decoder_linears(meta)}
    dtypes = [tensors.dtypes[n] for n in tensors.names if tensors.dtypes[n].is_floating_point]
    return ModelShape(
        params=params,
        linear_params=linear,
        hidden=hidden,
        intermediate=inter or 4 * hidden,
        layers=layers,
        heads=heads,
        kv_dim=kv_heads * head_dim,
        vocab=int(text.vocab_size),
        file_bytes=tensors.total,
        stored_dtype=max(set(dtypes), key=dtypes.count) if dtypes else torch.float32,
        meta=meta,
        attention_dropout=float(
            getattr(text, "attention_dropout", None) or getattr(text, "attn_pdrop", 0.0) or 0.0
        ),
    )


def backward_activations(
    shape: ModelShape, batch: int, length: int, itemsize: int, *, training: bool = False
) -> int:
    """What a backward pass keeps of the forward pass, plus the loss's logits.

    Per decoder block and token a Llama-style block saves about 10 hidden-wide tensors (the
    norms' inputs and outputs, q, attention output, o_proj input, residuals), 4 key/value-wide
    ones (k, v before and after rotary) and 4 MLP-wide ones (gate, up, the activation, their
    product); SDPA keeps its log-sum-exp, not the attention matrix. The logits are fp32 and
    the loss keeps its log-softmax and the gradient: three vocab-wide tensors per token.

    In ``training`` with attention dropout (GPT-2's ``attn_pdrop``), no fused kernel applies:
    each block keeps its attention matrices, four ``heads x length²`` tensors per sequence
    (the masked scores, their softmax, dropout's mask and the dropped probabilities;
    measured on GPT-2 in tests/test_plan.py: without them a full fine-tune's plan was 44 %
    under its peak).
    """
    tokens = batch * length
    per_block = (10 * shape.hidden + 4 * shape.kv_dim + 4 * shape.intermediate) * itemsize
    logits = 3 * shape.vocab * 4
    attention = 0
    if training and shape.attention_dropout > 0:
        attention = shape.layers * batch * shape.heads * length**2 * 4 * itemsize
    return tokens * (shape.layers * per_block + logits) + attention


def place(
    shape: ModelShape,
    dtype: torch.dtype,
    device: str,
    device_map: str | None,
    limits: Mapping[str, int],
) -> dict[str, int]:
    """Weight bytes per device: accelerate's own placement under a device map."""
    total = shape.params * dtype.itemsize
    if device_map is None:
        return {device: total}
    from accelerate import infer_auto_device_map

    from realignkit.modeling import parse_device_map

    mapping = parse_device_map(device_map)
    if isinstance(mapping, str):
        budget: dict[int | str, int] = {}
        for name, limit in limits.items():
            budget[int(name.split(":")[1]) if name.startswith("cuda:") else name] = limit
        if not budget:
            count = torch.cuda.device_count()
            budget = {i: torch.cuda.get_device_properties(i).total_memory for i in range(count)}
            budget["cpu"] = _host_memory()
        mapping = infer_auto_device_map(
            shape.meta,
            max_memory=budget,
            no_split_module_classes=getattr(shape.meta, "_no_split_modules", None) or [],
            dtype=dtype,
        )
    sizes = {n: p.numel() * dtype.itemsize for n, p in shape.meta.named_parameters()}
    placed: dict[str, int] = {}
    for param, size in sizes.items():
        where = _module_device(mapping, param)
        placed[where] = placed.get(where, 0) + size
    return placed


def _module_device(mapping: Mapping[str, Any], param: str) -> str:
    parts = param.split(".")
    for cut in range(len(parts), -1, -1):
        key = ".".join(parts[:cut])
        if key in mapping:
            where = mapping[key]
            return f"cuda:{where}" if isinstance(where, int) else str(where)
    return "cpu"


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _compute(device: str | None, dtype: str | None) -> tuple[str, torch.dtype]:
    from realignkit.modeling import default_device, default_dtype, parse_dtype

    where = torch.device(device) if device else default_device()
    chosen = parse_dtype(dtype) or default_dtype(where)
    name = "cpu" if where.type == "cpu" else f"{where.type}:{where.index or 0}"
    return name, chosen


@dataclass(frozen=True)
class ModelRun:
    """A command that loads a model to run it: the model, its compute dtype and device, the
    device map that places it, and the limits the plan is checked against."""

    command: str  # its fixed cost: :func:`fixed_cost`
    shape: ModelShape
    dtype: torch.dtype
    device: str
    device_map: str | None
    limits: Mapping[str, int]

    def stage(
        self, name: str, working: int, written: int, detail: str, dtype: torch.dtype | None = None
    ) -> Stage:
        """The model read once and placed (in ``dtype``, default the compute dtype), plus
        ``working`` bytes on the device its inputs start on."""
        baseline = fixed_cost(self.command)
        shape, dtype = self.shape, self.dtype if dtype is None else dtype
        placed = place(shape, dtype, self.device, self.device_map, self.limits)
        host = baseline + placed.get("cpu", 0)
        # A checkpoint loaded into another dtype keeps the file's pages mapped while converting.
        if dtype != shape.stored_dtype and "cpu" in placed:
            host += shape.file_bytes * placed["cpu"] // max(sum(placed.values()), 1)
        devices = {d: b for d, b in placed.items() if d not in ("cpu", "disk")}
        first = next(iter(devices), "cpu")
        if first == "cpu":
            host += working
        else:
            devices[first] += working
        return Stage(name, shape.file_bytes, written, host, devices, detail, baseline)


def model_run(command: str, opts: Mapping[str, Any], limits: Mapping[str, int]) -> ModelRun:
    """The model of ``opts["model"]`` run as ``--device``, ``--dtype`` and ``--device-map`` say."""
    shape = model_shape(opts["model"])
    device, dtype = _compute(opts.get("device"), opts.get("dtype"))
    return ModelRun(command, shape, dtype, device, opts.get("device_map"), limits)


def fisher_stages(opts: Mapping[str, Any], limits: Mapping[str, int]) -> list[Stage]:
    run = model_run("fisher", opts, limits)
    shape, dtype = run.shape, run.dtype
    modules = opts.get("modules")
    wanted = [m.strip() for m in str(modules).split(",")] if modules else None
    linear = {
        n: c
        for n, c in shape.linear_params.items()
        if wanted is None or n.rsplit(".", 2)[-2] in wanted
    }
    accumulators = 4 * sum(linear.values())
    cap = opts.get("max_accumulator_gib")
    if cap is not None:
        accumulators = min(
            accumulators, max(int(float(cap) * GIB), 4 * max(linear.values(), default=0))
        )
    mode = str(opts.get("mode", "per-sample"))
    batch = 1 if mode == "per-sample" else int(opts.get("batch_size", 8))
    length = int(opts.get("max_length", 512))
    largest = max(linear.values(), default=0)
    # One weight's gradient in the compute dtype and its fp32 square exist at once.
    working = (
        accumulators
        + largest * (dtype.itemsize + 4)
        + backward_activations(shape, batch, length, dtype.itemsize)
    )
    outputs = 4 * sum(linear.values())
    detail = (
        f"{len(linear)} linears, fp32 accumulators {_gib(accumulators)}, batch {batch} x "
        f"{length} tokens, {dtype}"
    )
    return [run.stage(f"fisher ({mode}): forward + backward", working, outputs, detail)]


def longest_prompt(opts: Mapping[str, Any]) -> int | None:
    """Tokens of the longest prompt ``eval`` will ask, rendered as it renders them: the
    benchmarks are read (as ``eval`` reads them before any model), the model is not."""
    from realignkit.eval.benchmarks import LoadOptions, load_benchmarks, split_specs
    from realignkit.eval.generate import HFGenerator, resolve_system_prompt
    from realignkit.eval.runner import benchmark_prompt
    from realignkit.modeling import load_tokenizer

    benches = load_benchmarks(
        split_specs(opts.get("safety")),
        split_specs(opts.get("utility")),
        LoadOptions(
            data_dir=opts.get("data_dir"),
            prompt_column=str(opts.get("prompt_column", "prompt")),
            answer_column=str(opts.get("answer_column", "answer")),
            limit=None if opts.get("limit") is None else int(opts["limit"]),
            seed=int(opts.get("seed", 0)),
        ),
    )
    if not any(b.rows for b in benches):
        return None
    generator = HFGenerator(None, load_tokenizer(opts["model"]))
    system = resolve_system_prompt(opts.get("system_prompt"))
    return max(
        len(generator.encode([benchmark_prompt(generator, b, row, system)])[0])
        for b in benches
        for row in b.rows
    )


def eval_stages(opts: Mapping[str, Any], limits: Mapping[str, int]) -> list[Stage]:
    run = model_run("eval", opts, limits)
    shape, dtype = run.shape, run.dtype
    batch = int(opts.get("batch_size", 16))
    # The longest prompt sets every batch's width (left padding): an upper bound per batch.
    prompt = int(opts.get("max_prompt_length") or longest_prompt(opts) or 512)
    new = int(opts.get("max_new_tokens", 256))
    length = prompt + new
    kv = batch * length * shape.layers * 2 * shape.kv_dim * dtype.itemsize
    # The prefill: one block's activations at a time, and fp32 logits of the last token.
    prefill = batch * prompt * (4 * shape.hidden + 2 * shape.intermediate) * dtype.itemsize
    working = kv + prefill + batch * shape.vocab * 4 * 2
    detail = f"batch {batch}, {prompt} prompt + {new} new tokens, KV cache {_gib(kv)}"
    return [run.stage("eval (hf): generation", working, 0, detail)]


def _bf16_autocast(requested: Any, device: str) -> bool:
    from realignkit.train.finetune import uses_bf16_autocast

    if requested is not None:
        requested = str(requested).lower() in ("true", "yes", "1")
    return uses_bf16_autocast(requested, torch.device(device))


def finetune_stages(opts: Mapping[str, Any], limits: Mapping[str, int]) -> list[Stage]:
    run = model_run("finetune", opts, limits)
    shape, dtype = run.shape, run.dtype
    # `--lora/--full` is one flag of the command (``lora``); `plan` may read it as ``full``.
    full = str(opts.get("full", "false")).lower() in ("true", "yes", "1")
    lora = not full and str(opts.get("lora", "true")).lower() not in ("false", "no", "0")
    batch = int(opts.get("batch_size", 8))
    length = int(opts.get("max_length", 512))
    activations = backward_activations(shape, batch, length, dtype.itemsize, training=True)
    if lora:
        rank = int(opts.get("lora_r", 16))
        targets = opts.get("target_modules")
        wanted = {t.strip() for t in str(targets).split(",")} if targets else None
        trainable = adapted_outputs = 0
        for name in shape.linear_params:
            if wanted is not None and name.rsplit(".", 2)[-2] not in wanted:
                continue
            module = shape.meta.get_submodule(name.rsplit(".", 1)[0])
            trainable += rank * sum(module.weight.shape)
            adapted_outputs += getattr(module, "out_features", None) or module.weight.shape[-1]
        state = 16 * trainable  # fp32 weight, gradient and Adam's two moments
        weights_dtype = dtype
        # Measured (tests/test_plan.py): an adapted linear keeps one more output-wide tensor
        # per token than the plain one (PEFT adds the low-rank path to the base output).
        activations += batch * length * adapted_outputs * dtype.itemsize
    else:
        trainable = shape.params
        state = 12 * trainable  # gradient and Adam's moments in fp32 beside fp32 weights
        weights_dtype = torch.float32
    working = state + activations
    if opts.get("gradient_checkpointing") not in (None, False, "false"):
        working -= activations * 9 // 10
    written = 4 * trainable if lora else shape.params * shape.stored_dtype.itemsize
    detail = (
        f"{'LoRA r=' + str(opts.get('lora_r', 16)) if lora else 'full'}: {trainable:,} "
        f"trainable entries, batch {batch} x {length} tokens"
    )
    if _bf16_autocast(opts.get("bf16"), run.device):
        # Autocast keeps part of the activations in bf16 and part in fp32 (softmax, norms,
        # the residual stream), in proportions that differ per layer type: the plan counts
        # them in fp32, an upper bound (measured on GPT-2 in tests/test_plan.py: planned
        # +664 MiB, measured +512 MiB under bf16 and +579 MiB without).
        detail += ", bf16 autocast (activations planned as fp32: an upper bound)"
    return [run.stage("finetune: training steps", working, written, detail, weights_dtype)]


def calibration_stage(
    shape: ModelShape,
    dtype: torch.dtype,
    device: str,
    rows: int,
    length: int,
    written: int,
    baseline: int,
    *,
    batch: int = 8,
    max_shard_size: str | int = "1GB",
) -> Stage:
    """Block-by-block recalibration (:func:`realignkit.calib.hessian.edit_blockwise`).

    The model waits on the CPU; one decoder block (plus the modules outside the blocks) is on
    the accelerator with the hidden states of every calibration row (in and out), fp32
    Hessians of the block's distinct linear inputs and fp32 copies of one weight being
    edited: nothing here grows with depth. One batch's pass through a block keeps its
    attention and MLP intermediates while the Hessian hooks take fp32 copies of the linears'
    inputs. On the host, the edited weights wait in the writer until a shard is full.
    """
    from realignkit.checkpoint.writer import parse_size

    block = shape.params // max(shape.layers, 1)
    hidden_states = 2 * rows * length * shape.hidden * dtype.itemsize
    hessians = 4 * (2 * shape.hidden**2 + shape.intermediate**2)
    largest = max(shape.linear_params.values(), default=0)
    wide = 4 * shape.hidden + 2 * shape.kv_dim + 3 * shape.intermediate
    forward = batch * length * wide * 4
    working = hidden_states + hessians + forward + 16 * largest
    host = baseline + shape.params * dtype.itemsize + min(written, parse_size(max_shard_size))
    devices = {} if device == "cpu" else {device: block * dtype.itemsize + working}
    if device == "cpu":
        host += working
    return Stage(
        "calibration: block by block",
        shape.file_bytes,
        written,
        host,
        devices,
        f"{rows} rows x {length} tokens, one block of {shape.layers} on the device",
        baseline,
    )


def irr_stages(opts: Mapping[str, Any], limits: Mapping[str, int]) -> list[Stage]:
    """IRR: the removal streams F, B, v and the Fisher scores; then the recalibration."""
    ft = tensors_of(opts["finetuned"], "fine-tuned model")
    base = tensors_of(opts["base"], "base model")
    sv = tensors_of(opts["safety_vector"], "safety vector")
    fisher = tensors_of(opts["fisher"], "fisher") if opts.get("fisher") else None
    edited = [n for n in ft.names if len(ft.shapes[n]) == 2 and ".layers." in n]
    extra = {n: base.nbytes.get(n, 0) + sv.nbytes.get(n, 0) for n in edited}
    if fisher is not None:
        for n in edited:
            extra[n] += fisher.nbytes.get(n, 0)
    # A weight's removal works in fp32: δ, the scores, v and the mask (about 4 fp32 copies).
    held_in = {n: ft.nbytes[n] + extra.get(n, 0) + 16 * ft.numel[n] for n in ft.names}
    held = stream_peak(ft.names, held_in, dict(ft.nbytes), 0, 1)
    read = ft.total + sum(extra.values())
    device, dtype = _compute(opts.get("device"), opts.get("dtype"))
    written = output_bytes(ft, ft.names, opts.get("max_shard_size", "1GB"))
    fixed = current_rss()
    stages = [Stage("irr: identify + remove", read, 0, fixed + held, {}, "streamed", fixed)]
    if str(opts.get("recalibrate", "true")).lower() not in ("false", "no", "0"):
        shape = model_shape(opts["base"])
        rows = int(opts.get("num_samples") or 128)
        length = int(opts.get("max_length") or 512)
        stages.append(
            calibration_stage(
                shape,
                dtype,
                device,
                rows,
                length,
                written,
                fixed_cost("calibration"),
                batch=int(opts.get("batch_size") or 8),
                max_shard_size=opts.get("max_shard_size", "1GB"),
            )
        )
    else:
        stages[0].written_bytes = written
    return stages


def layer_method_stages(
    method: Any, opts: Mapping[str, Any], values: Mapping[str, Any], limits: Mapping[str, int]
) -> list[Stage]:
    """A declared *layer* method: the aligned model runs on its data block after block."""
    params = method.resolve(values)
    shape = model_shape(opts["aligned"])
    device, _ = _compute(opts.get("device"), None)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    ft = tensors_of(opts["finetuned"], "fine-tuned model")
    written = output_bytes(ft, ft.names, opts.get("max_shard_size", "1GB"))
    stage = calibration_stage(
        shape,
        dtype,
        device,
        params["num_samples"],
        params["max_length"],
        written,
        fixed_cost("calibration"),
        batch=int(params.get("batch_size") or 8),
        max_shard_size=opts.get("max_shard_size", "1GB"),
    )
    stage.read_bytes += ft.total
    return [stage]


def safelora_adapter_stages(
    opts: Mapping[str, Any], *, workers: int = 2, baseline: int | None = None
) -> list[Stage]:
    """``safelora --adapter``: the adapter's factors, and for each adapted linear its aligned
    and pre-trained weights (V = W_A - W_P, its fp32 projection C·B and C·B·A); the output
    is an adapter of the same keys."""
    from realignkit.checkpoint.adapter import LORA_KEY, PEFT_PREFIX

    adapter = adapter_tensors(str(opts["adapter"]))
    aligned = tensors_of(str(opts["aligned"]), "aligned model")
    pretrained = tensors_of(str(opts["pretrained"]), "pre-trained model")
    modules = {}
    for key in adapter.names:
        found = LORA_KEY.match(key)
        if found:
            modules[found["module"].removeprefix(PEFT_PREFIX) + ".weight"] = found["module"]
    weights = [n for n in aligned.names if n in modules]
    read = adapter.header_bytes + adapter.total + aligned.header_bytes + pretrained.header_bytes
    held_in: dict[str, int] = {}
    for n in weights:
        read += aligned.nbytes[n] + pretrained.nbytes.get(n, 0)
        # V, the product C·B·A and the fp32 weight-wide copies the similarity compares.
        held_in[n] = aligned.nbytes[n] + pretrained.nbytes.get(n, 0) + 16 * aligned.numel[n]
    held = stream_peak(weights, held_in, dict.fromkeys(weights, 0), 0, workers)
    held += adapter.total  # the adapter's factors are kept until written
    support = sum(
        p.stat().st_size for p in adapter.folder.iterdir() if p.is_file() and p.suffix == ".json"
    )
    fixed = current_rss() if baseline is None else baseline
    return [
        Stage(
            name=f"safelora: project {len(weights)} adapted linears",
            read_bytes=read + support,
            written_bytes=output_bytes(adapter, adapter.names, "100GB") + support,
            host_bytes=fixed + held,
            fixed_bytes=fixed,
            detail=f"{workers} workers; reads the adapter, aligned, pretrained",
        )
    ]


def safelora_stages(opts: Mapping[str, Any], *, workers: int, shard: str | int) -> list[Stage]:
    """``safelora``: on an adapter (above) or, with ``--full``, the declared weight method."""
    from realignkit.methods.safelora import SAFELORA, SAFELORA_FULL

    full = str(opts.get("full", "false")).lower() in ("true", "yes", "1")
    if not full:
        if not opts.get("adapter"):
            raise RealignError("plan safelora: give --adapter, or --full with --finetuned")
        return safelora_adapter_stages(opts, workers=workers)
    values = {p.name: opts[p.name] for p in SAFELORA.params if opts.get(p.name) is not None}
    inputs = {k: opts.get(k) for k in _INPUT_NAMES}
    stages = weight_method_stages(
        SAFELORA_FULL, inputs, values, workers=workers, max_shard_size=shard
    )
    stages[0].name = stages[0].name.replace("safelora-full", "safelora --full")
    return stages


COMMANDS = ("resta", "safety-vector", "safelora", "fisher", "irr", "eval", "finetune", "unalign")


def planned_commands() -> set[str]:
    """Every command ``realignkit plan`` (and ``--dry-run``) knows: the fixed ones and every
    declared method with a command of its own."""
    from realignkit.methods.registry import load_methods

    return {*COMMANDS, *(n for n, m in load_methods().items() if m.cli)}


def plan_command(command: str, opts: Mapping[str, Any], *, baseline: int | None = None) -> Plan:
    """The plan of ``realignkit COMMAND`` with the options ``opts`` (names with underscores).

    ``baseline`` replaces the measured fixed cost of the process (the planning process's own
    resident memory), for planning from a process that has imported more or less than the
    CLI does.
    """
    if baseline is not None:
        _FIXED.append(baseline)
    try:
        return _plan_command(command, opts)
    finally:
        if baseline is not None:
            _FIXED.pop()


def _plan_command(command: str, opts: Mapping[str, Any]) -> Plan:
    from realignkit.methods.registry import load_methods

    limits = parse_limits(opts.get("max_memory"))
    workers = int(opts.get("workers", 2))
    shard = opts.get("max_shard_size", "1GB")
    methods = load_methods()
    notes: list[str] = []
    if command == "safety-vector":
        if opts.get("unaligned_adapter"):
            raise RealignError("plan safety-vector: a low-rank --unaligned-adapter is not planned")
        stages = safety_vector_stages(
            opts["aligned"], opts["unaligned"], workers=workers, max_shard_size=shard
        )
    elif command == "safelora":
        stages = safelora_stages(opts, workers=workers, shard=shard)
    elif command == "fisher":
        stages = fisher_stages(opts, limits)
    elif command == "irr":
        stages = irr_stages(opts, limits)
    elif command == "eval":
        stages = eval_stages(opts, limits)
        notes.append("vLLM (--backend vllm) reserves --gpu-memory-utilization of each GPU")
    elif command in ("finetune", "unalign"):
        stages = finetune_stages(opts, limits)
    elif command in methods and methods[command].cli:
        method = methods[command]
        values = {p.name: opts[p.name] for p in method.params if p.name in opts}
        if method.kind == "weight":
            inputs = {k: opts.get(k) for k in (*_INPUT_NAMES, "adapter")}
            stages = weight_method_stages(
                method, inputs, values, workers=workers, max_shard_size=shard
            )
        else:
            stages = layer_method_stages(method, opts, values, limits)
    else:
        known = sorted(planned_commands())
        raise RealignError(f"plan: unknown command {command!r}; planned: {', '.join(known)}")
    if any(s.device_bytes for s in stages):
        notes.append("device peaks leave out the CUDA context (about 0.5 GiB per GPU)")
    return Plan(command, stages, limits, notes)


_INPUT_NAMES = ("finetuned", "base", "safety_vector", "aligned", "pretrained", "safety_finetune")
