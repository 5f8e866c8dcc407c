"""Supervised fine-tuning through the chat template, full or LoRA: `finetune` and `unalign`.

One engine serves both commands: ``unalign`` is a fine-tune on harmful prompts paired with
compliant answers (it produces the unaligned model of a safety vector). Loss is on the response
tokens only: the prompt, rendered by :mod:`realignkit.chat` (the model's own chat template, the
format its evaluation and calibration use too), is masked out, so the model learns to answer,
not to repeat questions.

The loop is transformers' :class:`~transformers.Trainer` (gradient accumulation, bf16 autocast on
GPUs, schedulers, seeding); measured on the demo's tiny model it costs about 10% over a bare
PyTorch loop, a price worth the features real models need. Outputs are a normal model folder
(full) or a PEFT adapter folder (LoRA, with the tokenizer beside it), each with a model card,
written atomically through :class:`~realignkit.checkpoint.writer.CheckpointWriter`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from realignkit.chat import IGNORE, Encoded, encode_exchange, pad_batch
from realignkit.checkpoint.card import model_card
from realignkit.checkpoint.output import check_replaceable
from realignkit.checkpoint.source import resolve_model_dir
from realignkit.checkpoint.writer import CheckpointWriter
from realignkit.data import Row, read_prompts
from realignkit.errors import RealignError
from realignkit.modeling import default_device, load_causal_lm, load_tokenizer, parse_dtype

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every hyper-parameter of a fine-tune; all of them go into the model card."""

    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    """LoRA targets (module name suffixes); None means every linear layer but the LM head."""
    epochs: float = 1.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    lr: float | None = None
    """None: 2e-4 for LoRA, 2e-5 for full fine-tuning."""
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    warmup: float = 0.03
    """Warm-up: a share of the steps when below 1, else a number of steps."""
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    dtype: str | None = None
    """Weights dtype while training; None: bf16 base for LoRA on a bf16 GPU, else float32."""
    system_prompt: str | None = None
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = False
    """Full fine-tuning: keep the input embeddings and the LM head fixed (train the blocks)."""
    train_last_layers: int | None = None
    """Train only the last N decoder blocks (embeddings, LM head and the earlier blocks
    frozen); with LoRA, adapters on the last N blocks only. A CPU fast path: the backward pass
    stops at the first trained block, so N = 8 of 30 blocks costs about a third of a full
    fine-tune step."""
    bf16: bool | None = None
    """bf16 autocast (fp32 master weights). None: where the hardware has bf16 (a bf16 GPU, a
    CPU with AVX512-BF16/AMX/Arm BF16: about 1.3-2x faster than fp32 there); True: always
    (on other CPUs emulated, several times slower than fp32)."""
    group_by_length: bool = False
    """Batch rows of similar length together (less padding; the order is still seeded)."""
    merge_lora: bool = False
    """LoRA: write the full model with the adapter merged into its weights (a cheap way to
    update every layer when a full model is wanted), instead of the adapter."""
    device_map: str | dict[str, Any] | None = None
    """Split the model with accelerate's big-model dispatch (``auto``, ``balanced``, a JSON
    map to GPU indices, ``"cpu"`` and ``"disk"``): naive model parallelism, one process; the
    data-parallel and sharded paths are ``accelerate launch`` (examples/accelerate/)."""
    max_memory: str | dict[str, Any] | None = None
    """Memory per device for ``device_map`` (``0=70GiB,cpu=200GiB``)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora else 2e-5


# -- data --------------------------------------------------------------------------------------
def load_pairs(
    path: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    limit: int | None = None,
    seed: int = 0,
) -> list[Row]:
    """Prompt/response rows of a JSONL, JSON or CSV file, with empty rows refused."""
    rows = read_prompts(
        path, prompt_column=prompt_column, response_column=response_column, limit=limit, seed=seed
    )
    for i, row in enumerate(rows):
        if not str(row["prompt"] or "").strip() or not str(row["response"] or "").strip():
            raise RealignError(f"{path}: row {i + 1} has an empty prompt or response")
    return rows


def encode_pair(
    tokenizer: Any, prompt: str, response: str, *, max_length: int, system: str | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of one exchange and its labels, with every prompt position masked
    (:func:`realignkit.chat.encode_exchange` as the ids and labels a causal LM loss reads)."""
    row = encode_exchange(tokenizer, prompt, response, max_length=max_length, system_prompt=system)
    return row.ids, [IGNORE] * row.response_start + row.ids[row.response_start :]


class PairDataset(torch.utils.data.Dataset):
    """Tokenised exchanges; rows whose answer is cut off entirely by ``max_length`` are dropped."""

    def __init__(
        self, rows: Sequence[Row], tokenizer: Any, max_length: int, system: str | None = None
    ) -> None:
        self.items: list[Encoded] = []
        for row in tqdm(rows, desc="tokenize", leave=False, disable=len(rows) < 5000):
            encoded = encode_exchange(
                tokenizer,
                str(row["prompt"]),
                str(row["response"]),
                max_length=max_length,
                system_prompt=system,
            )
            if encoded.response_tokens:
                self.items.append(encoded)
        self.dropped = len(rows) - len(self.items)
        if not self.items:
            raise RealignError(f"no training row has a response within --max-length {max_length}")
        if self.dropped:
            log.warning(
                "%d rows dropped: their response starts after --max-length %d",
                self.dropped,
                max_length,
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # a mapping with ``input_ids``: what the Trainer's length-grouped sampler reads
        item = self.items[index]
        return {"input_ids": item.ids, "response_start": item.response_start}


class PadCollator:
    """Right-pads a batch to its longest row (:func:`realignkit.chat.pad_batch`); padding is
    masked and never a label."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [Encoded(item["input_ids"], item["response_start"]) for item in batch]
        return pad_batch(rows, self.pad_id)


# -- the trainer -------------------------------------------------------------------------------
def _progress_callback(desc: str) -> Any:
    """A tqdm bar with the running loss (instead of the Trainer's printed log dictionaries)."""
    from transformers import TrainerCallback

    class LossBar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.bar = tqdm(total=state.max_steps, desc=desc, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.bar.close()

    return LossBar()


def _lora_model(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: Any = config.target_modules or "all-linear"
    if config.train_last_layers is not None:
        targets = _linear_names_in_last_blocks(model, config.train_last_layers, targets)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:
        raise RealignError(f"LoRA target modules {targets!r}: {str(err).splitlines()[0]}") from err


def _first_trained_block(model: Any, count: int) -> int:
    """The index of the first of the last ``count`` decoder blocks (checked)."""
    from realignkit.calib.blocks import find_decoder_blocks

    _, blocks = find_decoder_blocks(model)
    if not 1 <= count <= len(blocks):
        raise RealignError(f"--train-last-layers must be in 1..{len(blocks)}, got {count}")
    return len(blocks) - count


def _train_only_last_blocks(model: Any, count: int) -> None:
    """Freeze every parameter but those of the last ``count`` decoder blocks."""
    from realignkit.calib.blocks import find_decoder_blocks

    first = _first_trained_block(model, count)
    model.requires_grad_(False)
    for block in find_decoder_blocks(model)[1][first:]:
        block.requires_grad_(True)


def _linear_names_in_last_blocks(model: Any, count: int, targets: Any) -> list[str]:
    """Full names of the LoRA targets inside the last ``count`` blocks (``targets``: suffixes,
    or "all-linear": every linear of a block, GPT-2's Conv1D included), so peft puts adapters
    there only."""
    from realignkit.calib.blocks import decoder_linears

    first = _first_trained_block(model, count)
    names = [
        layer.name
        for layer in decoder_linears(model)
        if layer.block_index >= first
        and (targets == "all-linear" or any(layer.name.endswith(t) for t in targets))
    ]
    if not names:
        raise RealignError(f"no LoRA target {targets!r} in the last {count} blocks")
    return names


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX, or Arm's BF16).

    Without it oneDNN emulates bf16: measured on an AVX2-only AMD EPYC, a bf16 ``nn.Linear``
    (256 x 576 x 1536) ran 3.7x slower than in float32, a bare bf16 matmul 33x slower.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def uses_bf16_autocast(requested: bool | None, device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast: as ``requested``, else where
    the hardware multiplies bf16 natively (a bf16 GPU, a CPU with AVX512-BF16 or AMX)."""
    if requested is not None:
        if requested and device.type == "cpu" and not cpu_has_native_bf16():
            log.warning(
                "bf16 on a CPU without bf16 instructions is emulated: several times "
                "slower than float32 (leave --bf16 unset to pick what is fast here)"
            )
        return requested
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def _train_dtype(config: TrainConfig, device: torch.device) -> tuple[torch.dtype, bool]:
    """(dtype of the loaded weights, bf16 autocast?) for this device and mode."""
    bf16 = uses_bf16_autocast(config.bf16, device)
    chosen = parse_dtype(config.dtype)
    if chosen is not None:
        return chosen, bf16
    # Full fine-tuning keeps fp32 master weights; a frozen LoRA base can stay in bf16.
    return (torch.bfloat16 if bf16 and config.lora else torch.float32), bf16


def response_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    num_items: Any = None,
    *,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, Any]:
    """The causal-LM loss on the response tokens, computing logits only where one is predicted.

    The same loss as the model's own (labels shifted by one, ``-100`` ignored, summed and
    divided by ``num_items`` when the Trainer counts tokens across accumulation steps, else
    their mean), but the LM head runs only at the positions that predict a labelled token in
    some row of the batch. The prompt (the chat template's system turn included) is most of
    every row, and the head is a fifth of a small model's compute and most of its activation
    memory (batch x length x vocabulary logits).

    With ``share_prefix`` the batch's common start (the system block and the user-turn header:
    a third of a short chat row) runs once, for a batch of one, with gradients, and its cache
    is repeated to every row (:func:`shared_prefix_cache`): the same loss and the same
    gradients (the repeat's backward sums the rows' contributions), for a fraction of the
    prefix's compute.
    """
    targets = batch["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().flatten()
    if keep.numel() == 0:  # nothing to learn in this batch: a zero loss that still backprops
        keep = torch.tensor([targets.shape[1] - 1], device=targets.device)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    shared, cache = (
        shared_prefix_cache(model, ids, attention, int(keep[0])) if share_prefix else (0, None)
    )
    if cache is not None:
        from realignkit.eval.prefix import cache_argument

        width = ids.shape[1]
        positions = torch.arange(shared, width, device=ids.device).expand(ids.shape[0], -1)
        outputs = model(
            input_ids=ids[:, shared:],
            attention_mask=attention,
            position_ids=positions,
            logits_to_keep=keep - shared,
            **{cache_argument(_unwrapped(model)): cache},
        )
    else:
        outputs = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep)
    picked = targets[:, keep]
    total = torch.nn.functional.cross_entropy(
        outputs.logits.float().transpose(1, 2), picked, ignore_index=-100, reduction="sum"
    )
    if num_items is None:
        num_items = (picked != -100).sum().clamp(min=1)
    if torch.is_tensor(num_items):
        num_items = num_items.to(total.device)
    return total / num_items, outputs


def _unwrapped(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (whose forward takes ``**kwargs`` only)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_prefix_cache(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, first_kept: int
) -> tuple[int, Any | None]:
    """The length of the leading tokens every row of a right-padded training batch shares and
    the model's cache after them, with gradients, repeated to the batch
    (:func:`realignkit.eval.prefix.prefix_cache`); ``(0, None)`` when the plain pass must run.

    The prefix stops before ``first_kept`` (the first position whose logits the loss reads)
    and before any padding; sharing is taken where :func:`realignkit.eval.prefix.
    supports_prefix_sharing` says positions and caches behave as in the plain pass, and only
    when the prefix is long enough to pay for a second forward call.
    """
    from realignkit.eval.prefix import prefix_cache, supports_prefix_sharing

    rows, width = input_ids.shape
    if rows < 2:
        return 0, None
    same = (input_ids == input_ids[:1]).all(dim=0) & (attention_mask == 1).all(dim=0)
    shared = int(same.long().cumprod(dim=0).sum())
    shared = min(shared, first_kept, width - 1)
    if shared < MIN_SHARED_PREFIX or not supports_prefix_sharing(_unwrapped(model), width):
        return 0, None
    cache = prefix_cache(model, input_ids[0, :shared].tolist(), rows, grad=True)
    return (shared, cache) if cache is not None else (0, None)


MIN_SHARED_PREFIX = 8
"""Fewer shared tokens than this are run in the batched pass (a second call costs more)."""


def _checkpoint_dtype(model: str | os.PathLike[str]) -> torch.dtype:
    """The dtype the model is stored in (its config.json), which the output keeps."""
    config = json.loads((resolve_model_dir(model) / "config.json").read_text(encoding="utf-8"))
    value = config.get("dtype") or config.get("torch_dtype")
    return (parse_dtype(value) if isinstance(value, str) else None) or torch.float32


def finetune(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | Sequence[Row],
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    overwrite: bool = False,
    method: str = "finetune",
    summary: str | None = None,
    data_name: str | None = None,
) -> Path:
    """Fine-tune ``model`` on prompt/response ``data``; write a model folder or a LoRA adapter.

    ``data`` is a file (read with the ``prompt``/``response`` columns; use :func:`load_pairs`
    for other names) or a list of rows. Returns the output folder.
    """
    from transformers import ProgressCallback, Trainer, TrainingArguments, set_seed

    config = config or TrainConfig()
    out = Path(out)
    check_replaceable(out, overwrite)  # now, not after the training
    rows = load_pairs(data) if isinstance(data, (str, os.PathLike)) else list(data)
    if not rows:
        raise RealignError("no training rows")
    if config.max_steps is None and config.epochs <= 0:
        raise RealignError("--epochs must be positive (or give --max-steps)")

    device = default_device()
    load_dtype, bf16 = _train_dtype(config, device)
    tokenizer = load_tokenizer(model, padding_side="right")
    dataset = PairDataset(rows, tokenizer, config.max_length, config.system_prompt)
    set_seed(config.seed)
    save_dtype = _checkpoint_dtype(model)
    if config.device_map is not None and _world_size() > 1:
        raise RealignError(
            "--device-map splits one process's model over devices; under `accelerate launch` "
            "use an FSDP or DeepSpeed config instead (examples/accelerate/)"
        )
    lm = load_causal_lm(
        model,
        dtype=load_dtype,
        device=device,
        device_map=config.device_map,
        max_memory=config.max_memory,
    )
    offloaded = _offloaded(lm)
    if offloaded:
        # accelerate swaps disk-offloaded weights in for the forward pass only: autograd then
        # meets meta tensors in the backward pass (also for a frozen LoRA base).
        raise RealignError(
            f"training cannot use weights offloaded to disk (module {offloaded[0]!r}): give "
            '--max-memory more GPU or CPU memory, or a device map without "disk"'
        )
    if config.lora:
        lm = _lora_model(lm, config)
    elif config.train_last_layers is not None:
        _train_only_last_blocks(lm, config.train_last_layers)
    elif config.freeze_embeddings:
        for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
            if module is not None:
                module.requires_grad_(False)
    if config.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
        lm.config.use_cache = False
        if config.lora:
            lm.enable_input_require_grads()

    work_dir = Path(tempfile.mkdtemp(prefix="realignkit-train-"))
    try:
        args = TrainingArguments(
            output_dir=str(work_dir),
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.scheduler,
            warmup_steps=config.warmup,
            weight_decay=config.weight_decay,
            bf16=bf16,
            seed=config.seed,
            data_seed=config.seed,
            logging_steps=max(1, min(50, _steps(config, len(dataset)) // 10)),
            save_strategy="no",
            report_to="none",
            use_cpu=device.type == "cpu",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            disable_tqdm=False,
        )

        # One process, no checkpointing, no device map: the prefix's second forward call is
        # then plain autograd (DDP's reducer and checkpointing's replay expect one call).
        share_prefix = (
            _world_size() == 1 and not config.gradient_checkpointing and config.device_map is None
        )

        class ResponseLossTrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
                loss, outputs = response_loss(
                    model, inputs, num_items_in_batch, share_prefix=share_prefix
                )
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    # num_items_in_batch counts every process's tokens and the gradients are
                    # averaged over processes: scale back as Trainer.compute_loss does.
                    tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                    loss = loss * (self.accelerator.num_processes // tp_size)
                return (loss, outputs) if return_outputs else loss

        trainer = ResponseLossTrainer(
            model=lm,
            args=args,
            train_dataset=dataset,
            data_collator=PadCollator(tokenizer.pad_token_id),
        )
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_progress_callback(method))
        result = trainer.train()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    stats = {
        "rows": len(dataset),
        "rows_dropped": dataset.dropped,
        "steps": trainer.state.global_step,
        "first_loss": round(float(losses[0]), 4) if losses else None,
        "final_loss": round(float(losses[-1]), 4) if losses else None,
        "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1),
        "device": str(device),
        "processes": trainer.accelerator.num_processes,
        "bf16_autocast": bf16,  # what ran (``bf16`` above is what was asked)
        "losses": [round(float(x), 6) for x in losses],
    }
    params = {k: v for k, v in asdict(config).items() if k != "extra"} | config.extra
    params["lr"] = config.learning_rate
    card = model_card(
        method=method,
        summary=summary or _summary(method, config),
        inputs={"model": str(model), "data": data_name or _data_name(data)},
        params=params | stats,
        base_model=str(model),
    )
    # Under `accelerate launch` every process runs this function. The weights are gathered
    # on every rank (a collective under FSDP / DeepSpeed ZeRO-3) and written once, by the
    # main process, while the others wait.
    accelerator = trainer.accelerator
    distributed = accelerator.num_processes > 1
    state_dict = accelerator.get_state_dict(trainer.model) if distributed else None
    if trainer.is_world_process_zero():
        if config.device_map is None:
            lm = lm.to("cpu")
        with CheckpointWriter(out, overwrite=overwrite) as writer:
            if config.lora and config.merge_lora:
                # a DDP replica holds the whole trained adapter: merge it on the main process
                lm.merge_and_unload().to(save_dtype).save_pretrained(writer.path)
            elif config.lora:
                lm.save_pretrained(writer.path, state_dict=state_dict)
            else:
                if state_dict is not None:
                    state_dict = {k: v.to(save_dtype) for k, v in state_dict.items()}
                lm.to(save_dtype).save_pretrained(writer.path, state_dict=state_dict)
            tokenizer.padding_side = "left"
            tokenizer.save_pretrained(writer.path)
            writer.write_json("realignkit_train.json", {"method": method, **params, **stats})
            writer.write_card(card)
    if distributed:
        accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        log.info(
            "%s: %d steps, loss %s -> %s, wrote %s",
            method,
            stats["steps"],
            stats["first_loss"],
            stats["final_loss"],
            out,
        )
    return out


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _offloaded(lm: Any) -> list[str]:
    """Modules a device map sent to disk (their weights wait on the meta device)."""
    device_map = getattr(lm, "hf_device_map", None) or {}
    return [name for name, where in device_map.items() if where == "disk"]


def unalign(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | Sequence[Row],
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    **kwargs: Any,
) -> Path:
    """Fine-tune an aligned model on harmful prompts with compliant answers (the unaligned model).

    The same engine as :func:`finetune`; only the card differs. Its output, with the aligned
    model, gives the safety vector v = θ_aligned − θ_unaligned.
    """
    summary = (
        "Unaligned on purpose: fine-tuned on harmful prompts paired with compliant answers, "
        "to compute a safety vector. Do not deploy."
    )
    return finetune(model, data, out, config, method="unalign", summary=summary, **kwargs)


def _steps(config: TrainConfig, rows: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = math.ceil(rows / (config.batch_size * config.grad_accum))
    return max(1, math.ceil(per_epoch * config.epochs))


def _summary(method: str, config: TrainConfig) -> str:
    kind = f"LoRA (r={config.lora_r}, alpha={config.lora_alpha})" if config.lora else "Full"
    return f"{kind} supervised fine-tune, loss on the response tokens only ({method})."


def _data_name(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    return f"{len(data)} rows given in memory"
