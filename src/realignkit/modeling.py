"""Loading a model to *run* it (generation, gradients, calibration, training).

Weight edits never come here: they stream tensors through :mod:`realignkit.checkpoint`.
This module is for the code paths that must hold the model in memory.
"""

from __future__ import annotations

import os
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
) -> Any:
    """Load a causal LM (optionally with a PEFT LoRA adapter on top) onto one device.

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
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
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
    lm.to(device)
    lm.eval()
    return lm
