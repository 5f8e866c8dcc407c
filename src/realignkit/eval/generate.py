"""Batched generation behind one interface: Hugging Face ``generate`` or vLLM.

Both backends receive the same token ids: prompts are rendered by :mod:`realignkit.chat` (the
model's own chat template, or the plain ``User:/Assistant:`` fallback when it has none, the
format every fine-tune and calibration pass uses too) and tokenised here, so a switch of
backend never changes what the model sees. Generation is greedy unless a
temperature is set. :func:`generate_cached` runs only the prompts not yet in the cache and
writes each finished batch to it.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from realignkit.chat import Encoded, has_chat_template, pad_batch, render_prompt, token_ids
from realignkit.errors import RealignError
from realignkit.eval.cache import JsonlCache, fingerprint, make_key
from realignkit.eval.prefix import cache_argument, run_shared_prefix, with_prefix

log = logging.getLogger(__name__)

# The default system prompt of Llama-2-chat (Meta's reference code), used by the IRR paper.
LLAMA2_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe. Your answers should not include any harmful, unethical, racist, sexist, "
    "toxic, dangerous, or illegal content. Please ensure that your responses are socially "
    "unbiased and positive in nature.\n\nIf a question does not make any sense, or is not "
    "factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
SYSTEM_PROMPT_ALIASES = {"llama2": LLAMA2_SYSTEM_PROMPT, "llama-2": LLAMA2_SYSTEM_PROMPT}

BACKENDS = ("auto", "hf", "vllm")


def resolve_system_prompt(value: str | None) -> str | None:
    """``"llama2"`` names the Llama-2 default system prompt; anything else is the prompt text."""
    if value is None or value == "":
        return None
    return SYSTEM_PROMPT_ALIASES.get(value.strip().lower(), value)


@dataclass(frozen=True)
class GenerationSettings:
    """What decides a completion besides the model and the prompt (part of the cache key)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RealignError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise RealignError(f"the number of samples must be >= 1, got {self.num_samples}")
        if self.num_samples > 1 and self.temperature <= 0:
            raise RealignError("several samples per prompt need a temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def cache_fields(self) -> dict[str, Any]:
        """The fields that change the output: sampling knobs only matter when sampling."""
        fields = asdict(self)
        if self.greedy:
            fields.update(temperature=0.0, top_p=1.0, seed=0)
        return fields


format_prompt = render_prompt
"""The full text a model sees (the name eval has always exported): one rendering for every pass."""


class Generator(ABC):
    """A loaded model that turns rendered prompts into completions."""

    backend: str = "?"

    def __init__(self, tokenizer: Any, model_fingerprint: str, dtype: str = "auto") -> None:
        self.tokenizer = tokenizer
        self.fingerprint = model_fingerprint
        self.dtype = dtype  # what the weights compute in ("auto": the engine's choice)

    @property
    def cache_key(self) -> list[str]:
        """What decides the outputs besides the prompt and the sampling: the model's bytes, the
        engine and the dtype it runs in (bf16 weights moved the demo's fine-tune from 82 % to
        60 % harmful at greedy decoding: answers from one dtype never stand in for another's)."""
        return [self.fingerprint, self.backend, self.dtype]

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    def format(self, prompt: str, *, system_prompt: str | None = None, chat: bool = True) -> str:
        return format_prompt(self.tokenizer, prompt, system_prompt=system_prompt, chat=chat)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [token_ids(self.tokenizer, t) for t in texts]

    @abstractmethod
    def generate(self, texts: list[str], settings: GenerationSettings) -> list[list[str]]:
        """``settings.num_samples`` completions for each rendered prompt in ``texts``."""

    def chunk_size(self, batch_size: int) -> int:
        """How many prompts to hand over at once (a cache write follows each chunk)."""
        return batch_size

    def close(self) -> None:
        """Free the model (before a model judge is loaded)."""
        return None


class HFGenerator(Generator):
    """Left-padded batches through ``model.generate``; halves a batch that runs out of memory.

    A batch's common prompt prefix (system block, user-turn header) is run once and its cache
    shared by every row (:mod:`realignkit.eval.prefix`), where the model allows it.
    """

    backend = "hf"

    def __init__(
        self, model: Any, tokenizer: Any, model_fingerprint: str = "", *, share_prefix: bool = True
    ) -> None:
        dtype = str(getattr(model, "dtype", "auto")).removeprefix("torch.")
        super().__init__(tokenizer, model_fingerprint, dtype=dtype)
        self.model = model
        # the outputs are the same either way, so it is no part of generate_cached's key
        self.share_prefix = share_prefix

    @property
    def device(self) -> torch.device:
        from realignkit.modeling import input_device

        return input_device(self.model)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.extend(source if isinstance(source, list) else [source])
        return sorted(set(ids))

    def generate_ids(
        self, batch: list[list[int]], settings: GenerationSettings
    ) -> list[list[list[int]]]:
        """New token ids (cut at the first EOS) for a batch of prompt ids."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self._eos_ids()[0] if self._eos_ids() else 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=self._eos_ids() or None,
            num_return_sequences=settings.num_samples,
        )
        shared, cache = 0, None
        if self.share_prefix:
            total = max(len(ids) for ids in batch) + settings.max_new_tokens
            shared, cache = run_shared_prefix(
                self.model, batch, copies=settings.num_samples, total_length=total
            )
        rest = [Encoded(ids[shared:], len(ids) - shared) for ids in batch]
        padded = pad_batch(rest, pad_id, left=True)
        input_ids, attention = padded["input_ids"], padded["attention_mask"]
        if cache is not None:
            # [prefix][padding][rest], mask 1/0/1: generate's position ids (the mask's cumsum)
            # continue after the prefix, as in the plain left-padded batch
            input_ids, attention = with_prefix(batch[0][:shared], input_ids, attention)
            kwargs[cache_argument(self.model)] = cache
        width = input_ids.shape[1]
        if settings.greedy:
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=None
            )
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **kwargs,
            )
        stop = set(self._eos_ids())
        cleaned = []
        for ids in out[:, width:].tolist():  # finished rows end with EOS, then padding
            end = next((i for i, t in enumerate(ids) if t in stop), len(ids))
            cleaned.append(ids[:end])
        n = settings.num_samples
        return [cleaned[i * n : (i + 1) * n] for i in range(len(batch))]

    def _generate_ids_safely(
        self, batch: list[list[int]], settings: GenerationSettings
    ) -> list[list[list[int]]]:
        try:
            return self.generate_ids(batch, settings)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise RealignError(
                    "out of memory generating one prompt; lower --max-new-tokens"
                ) from None
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory at batch size %d; retrying in halves", len(batch))
            return self._generate_ids_safely(batch[:half], settings) + self._generate_ids_safely(
                batch[half:], settings
            )

    def generate(self, texts: list[str], settings: GenerationSettings) -> list[list[str]]:
        ids = self._generate_ids_safely(self.encode(texts), settings)
        return [
            [self.tokenizer.decode(sample, skip_special_tokens=True) for sample in samples]
            for samples in ids
        ]

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMGenerator(Generator):
    """vLLM's offline engine fed with our token ids (so templates match the HF backend)."""

    backend = "vllm"

    def __init__(
        self,
        model_dir: Path,
        tokenizer: Any,
        model_fingerprint: str = "",
        *,
        adapter_dir: Path | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
    ) -> None:
        dtype_name = {
            torch.bfloat16: "bfloat16",
            torch.float16: "float16",
            torch.float32: "float32",
        }.get(dtype, "auto")
        super().__init__(tokenizer, model_fingerprint, dtype=dtype_name)
        from vllm import LLM

        extra: dict[str, Any] = {}
        self.lora_request = None
        if adapter_dir is not None:
            import json

            from vllm.lora.request import LoRARequest

            rank = json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 16)
            extra.update(enable_lora=True, max_lora_rank=max(8, int(rank)))
            self.lora_request = LoRARequest("adapter", 1, str(adapter_dir))
        self.llm = LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype_name,
            seed=seed,
            trust_remote_code=trust_remote_code,
            # vLLM's own parallelism: tensor parallel within a node, pipeline parallel across
            # GPUs or nodes (a Ray cluster started beforehand, as vLLM documents)
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            **extra,
        )

    def chunk_size(self, batch_size: int) -> int:
        return max(256, batch_size)

    def generate(self, texts: list[str], settings: GenerationSettings) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=settings.num_samples,
            temperature=0.0 if settings.greedy else settings.temperature,
            top_p=1.0 if settings.greedy else settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=None if settings.greedy else settings.seed,
        )
        prompts = [{"prompt_token_ids": ids} for ids in self.encode(texts)]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        return [[choice.text for choice in out.outputs] for out in outputs]

    def close(self) -> None:
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto`` is vLLM on a CUDA machine that has it installed, else Hugging Face."""
    if backend not in BACKENDS:
        raise RealignError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "vllm" and not vllm_available():
        raise RealignError("--backend vllm needs the vllm package (pip install vllm)")
    if backend == "auto":
        return "vllm" if device.type == "cuda" and vllm_available() else "hf"
    return backend


def load_generator(
    model: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    memo_path: Path | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str, Any] | None = None,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> Generator:
    """Load the tokenizer and model once, on the backend asked for.

    ``device_map`` / ``max_memory`` split the HF model over several devices (accelerate);
    ``tensor_parallel_size`` / ``pipeline_parallel_size`` are vLLM's own parallelism.
    """
    if tensor_parallel_size < 1 or pipeline_parallel_size < 1:
        raise RealignError("--tensor-parallel-size and --pipeline-parallel-size must be >= 1")
    from realignkit.checkpoint.source import resolve_model_dir
    from realignkit.modeling import default_device, load_causal_lm, load_tokenizer

    device = torch.device(device) if device is not None else default_device()
    chosen = pick_backend(backend, device)
    from realignkit.modeling import check_model_folder

    model_dir = resolve_model_dir(model)
    adapter_dir = resolve_model_dir(adapter, what="adapter") if adapter is not None else None
    check_model_folder(model_dir, adapter_dir)  # one validated path, for every backend
    tokenizer = load_tokenizer(model_dir, adapter=adapter_dir, trust_remote_code=trust_remote_code)
    folders = [model_dir] + ([adapter_dir] if adapter_dir is not None else [])
    model_fp = fingerprint(folders, memo_path)
    if chosen != "vllm" and (tensor_parallel_size > 1 or pipeline_parallel_size > 1):
        raise RealignError(
            "--tensor-parallel-size / --pipeline-parallel-size are vLLM's; with the hf backend "
            "split a large model with --device-map auto"
        )
    if chosen == "vllm" and device_map is not None:
        raise RealignError("--device-map is for the hf backend; vLLM splits a model itself")
    if chosen == "vllm":
        return VLLMGenerator(
            model_dir,
            tokenizer,
            model_fp,
            adapter_dir=adapter_dir,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
        )
    lm = load_causal_lm(
        model_dir,
        adapter=adapter_dir,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        merge_adapter=adapter_dir is not None,
        device_map=device_map,
        max_memory=max_memory,
    )
    return HFGenerator(lm, tokenizer, model_fp)


def generate_cached(
    generator: Generator,
    texts: list[str],
    settings: GenerationSettings,
    cache: JsonlCache,
    *,
    batch_size: int = 16,
    desc: str = "generate",
) -> list[list[str]]:
    """Completions for rendered prompts, generating only those the cache lacks.

    Prompts are sorted longest first (less padding, and an out-of-memory batch shows up at
    the start, not after an hour); each finished chunk is written to the cache at once.
    """
    if batch_size < 1:
        raise RealignError(f"batch size must be >= 1, got {batch_size}")
    keys = [make_key(*generator.cache_key, text, settings.cache_fields()) for text in texts]
    todo: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in cache and key not in todo:
            todo[key] = text
    order = sorted(todo, key=lambda k: len(todo[k]), reverse=True)
    chunk = generator.chunk_size(batch_size)
    with tqdm(total=len(order), desc=desc, unit="prompt", disable=not order) as bar:
        for start in range(0, len(order), chunk):
            batch_keys = order[start : start + chunk]
            outputs = generator.generate([todo[k] for k in batch_keys], settings)
            cache.put_many(dict(zip(batch_keys, outputs, strict=True)))
            bar.update(len(batch_keys))
    return [cache.get(key) for key in keys]
