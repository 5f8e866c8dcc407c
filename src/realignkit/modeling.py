"""Loading a model to *run* it (generation, gradients, calibration, training).

Weight edits never come here: they stream tensors through :mod:`realignkit.checkpoint`.
This module is for the code paths that must hold the model in memory.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint.source import resolve_model_dir
from realignkit.errors import RealignError


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators that support it, fp32 on the CPU (CPU bf16 matmuls are slow)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def parse_dtype(name: str | None) -> torch.dtype | None:
    """`"bf16"`, `"bfloat16"`, `"fp16"`, `"float32"`... to a torch dtype; None or "auto" to None."""
    if name is None or name == "auto":
        return None
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
        "fp64": torch.float64,
        "float64": torch.float64,
    }
    if name not in table:
        raise RealignError(f"unknown dtype {name!r}; use one of {', '.join(sorted(table))}")
    return table[name]


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | dict[str, Any]

_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$", re.IGNORECASE)


def parse_device_map(spec: str | dict[str, Any] | None) -> DeviceMap | None:
    """``--device-map``: accelerate's strategies, or a JSON object (inline or a file path).

    A JSON map sends module names to a GPU index, ``"cpu"`` or ``"disk"``, as in
    ``{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", ...}``.
    """
    if spec is None or isinstance(spec, dict):
        return spec
    if spec in DEVICE_MAP_STRATEGIES:
        return spec
    text = Path(spec).read_text() if Path(spec).is_file() else spec
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise RealignError(
            f"--device-map {spec!r}: use one of {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON "
            'object such as {"model.layers.0": 0, "lm_head": "cpu"}, or a file holding one'
        )
    for module, where in mapping.items():
        if not (
            isinstance(where, int) or where in ("cpu", "disk") or str(where).startswith("cuda")
        ):
            raise RealignError(
                f"--device-map: module {module!r} is sent to {where!r}; use a GPU index, "
                '"cpu" or "disk"'
            )
    return mapping


def parse_max_memory(spec: str | dict[str, Any] | None) -> dict[int | str, str] | None:
    """``--max-memory 0=70GiB,1=70GiB,cpu=200GiB`` (or the same as a JSON object)."""
    if spec is None or isinstance(spec, dict):
        return spec
    text = spec.strip()
    pairs: dict[str, Any]
    if text.startswith("{"):
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError as err:
            raise RealignError(f"--max-memory {spec!r} is not valid JSON ({err.msg})") from err
    else:
        pairs = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise RealignError(f"--max-memory: {item!r} is not DEVICE=SIZE (e.g. 0=70GiB)")
            pairs[key.strip()] = value.strip()
    limits: dict[int | str, str] = {}
    for key, value in pairs.items():
        device: int | str = int(key) if str(key).isdigit() else str(key)
        if not (isinstance(device, int) or device in ("cpu", "disk", "mps")):
            raise RealignError(f"--max-memory: unknown device {key!r} (a GPU index, cpu or disk)")
        if not _SIZE.match(str(value)):
            raise RealignError(f"--max-memory: {value!r} is not a size such as 70GiB or 512MB")
        limits[device] = str(value)
    return limits or None


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: its first module's device, also under a device map.

    A model dispatched by accelerate has hooks that move activations between devices, but
    the token ids must start where the embedding runs; parameters offloaded to disk sit on
    the ``meta`` device and say nothing.
    """
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        if isinstance(first, int):
            return torch.device("cuda", first)
        return torch.device("cpu" if first in ("cpu", "disk") else first)
    return next(model.parameters()).device


def _offload_folder() -> str:
    """A temporary folder for weights offloaded to disk, removed when the process ends."""
    folder = tempfile.mkdtemp(prefix="realignkit-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def load_tokenizer(
    model: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    padding_side: str = "left",
) -> Any:
    """The tokenizer of a model (or of its adapter folder when it carries one), padding set.

    Models without a pad token get their EOS token as pad, as generation code expects.
    """
    from transformers import AutoTokenizer

    candidates: list[Path] = []
    if adapter is not None:
        adapter_dir = resolve_model_dir(adapter, what="adapter")
        if any((adapter_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            candidates.append(adapter_dir)
    candidates.append(resolve_model_dir(model))
    last_error: Exception | None = None
    for folder in candidates:
        try:
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
            break
        except Exception as err:  # noqa: PERF203 - try the next candidate
            last_error = err
    else:
        raise RealignError(
            f"no tokenizer found in {str(candidates[-1])!r} ({type(last_error).__name__}); "
            "copy the tokenizer files into the model folder"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def check_model_folder(
    model_dir: Path, adapter_dir: Path | None = None, *, allow_pickle: bool = False
) -> None:
    """Before a model is loaded to run: its weight files are whole (headers parse, no shard is
    truncated) and an adapter fits it entirely (every adapted tensor exists with its shape,
    ranks match the config), checked the way the weight commands check them."""
    from contextlib import closing

    from realignkit.checkpoint.adapter import LoraAdapter
    from realignkit.checkpoint.reader import CheckpointReader

    with CheckpointReader(model_dir, allow_pickle=allow_pickle) as ckpt:
        if adapter_dir is not None:
            with closing(LoraAdapter(adapter_dir)) as lora:
                lora.check_against(ckpt)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_causal_lm(
    model: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    allow_pickle: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str, Any] | None = None,
) -> Any:
    """Load a causal LM (optionally with a PEFT LoRA adapter on top) to run it.

    Without ``device_map`` the model goes onto one device. With it, accelerate's big-model
    dispatch places it (``"auto"``, ``"balanced"``, ``"sequential"`` or an explicit map over
    GPUs, ``"cpu"`` and ``"disk"``, within ``max_memory`` per device): a model larger than
    one GPU runs split across several, spilling to CPU memory and then to disk.
    ``merge_adapter`` folds the adapter into the weights (faster generation); the base is
    loaded in memory anyway because the model has to run.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    model_dir = resolve_model_dir(model, allow_pickle=allow_pickle)
    if not (model_dir / "config.json").exists():
        raise RealignError(f"model {str(model_dir)!r} has no config.json")
    adapter_dir = resolve_model_dir(adapter, what="adapter") if adapter is not None else None
    check_model_folder(model_dir, adapter_dir, allow_pickle=allow_pickle)
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {
            "device_map": parse_device_map(device_map),
            "max_memory": parse_max_memory(max_memory),
            "offload_folder": _offload_folder(),
        }
    elif max_memory is not None:
        raise RealignError("--max-memory needs --device-map (e.g. --device-map auto)")
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **placement,
        )
    except Exception as err:  # transformers and safetensors raise many kinds
        raise RealignError(f"cannot load model {str(model_dir)!r}: {_first_line(err)}") from err
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            lm = PeftModel.from_pretrained(lm, adapter_dir)
        except Exception as err:  # PEFT's own refusals, as one line
            raise RealignError(
                f"PEFT cannot apply adapter {str(adapter_dir)!r} to {str(model_dir)!r}: "
                f"{_first_line(err)}"
            ) from err
        if merge_adapter:
            lm = lm.merge_and_unload()
    if device_map is None:
        lm.to(device)
    lm.eval()
    return lm
