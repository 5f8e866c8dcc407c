"""Layer-by-layer calibration: input Hessians of linear layers, one decoder block at a time.

The driver (:func:`edit_blockwise`) follows SparseGPT's sequential scheme:

1. run the model up to its first decoder block and keep that block's call (hidden states plus
   the keyword arguments the model passes: attention mask, position ids, rotary embeddings...)
   by a pre-hook that stops the forward pass, so the driver needs no knowledge of how any
   architecture builds those;
2. for each block: move it to the accelerator, run it on the kept inputs with hooks that add
   ``x xᵀ`` of every non-padding token into one Hessian per group of layers sharing an input,
   let the caller edit the block's weights, then run the *edited* block again: its outputs are
   the next block's inputs, so later layers compensate for the edits made before them.

Only the block being edited and the modules outside the blocks (embeddings, final norm, head)
live on the accelerator; the other blocks stay on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from realignkit.calib.blocks import LinearLayer, block_linears, find_decoder_blocks, group_by_input
from realignkit.errors import RealignError

log = logging.getLogger(__name__)


class HessianAccumulator:
    """``H = (2/n) Σ x xᵀ`` over the tokens a layer saw, padding positions left out (fp32)."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.sum = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        """Add a ``(..., features)`` input; ``token_mask`` (bool, shaped like ``inputs[..., 0]``)
        marks the real tokens. Inputs whose leading shape differs are taken whole."""
        if token_mask is not None and inputs.shape[:-1] == token_mask.shape:
            rows = inputs[token_mask]
        else:
            rows = inputs.reshape(-1, inputs.shape[-1])
        rows = rows.float()
        self.sum.addmm_(rows.t(), rows)
        self.tokens += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.tokens == 0:
            raise RealignError("no calibration tokens reached a layer")
        return self.sum * (2.0 / self.tokens)


@dataclass
class BlockCall:
    """How the model called the first block for one calibration batch."""

    args: tuple
    kwargs: dict[str, Any]
    token_mask: torch.Tensor
    hidden_in_kwargs: bool = field(default=False)

    def hidden(self) -> torch.Tensor:
        return self.kwargs["hidden_states"] if self.hidden_in_kwargs else self.args[0]

    def with_hidden(self, hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        if self.hidden_in_kwargs:
            return self.args, {**self.kwargs, "hidden_states": hidden}
        return (hidden, *self.args[1:]), self.kwargs


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are known."""


def _move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Put every parameter and buffer that is not inside a decoder block on ``device``."""
    inside = {id(m) for m in blocks.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for param in module._parameters.values():
            if param is not None and param.device != device:
                param.data = param.data.to(device)
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)


def _first_output(output: Any) -> torch.Tensor:
    """Decoder blocks return the hidden states, or a tuple that starts with them."""
    return output[0] if isinstance(output, tuple | list) else output


def capture_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
) -> list[BlockCall]:
    """Run the model on each batch until its first block and keep that block's call."""
    calls: list[BlockCall] = []

    def hook(_module, args, kwargs):
        hidden_in_kwargs = not args
        calls.append(BlockCall(args, dict(kwargs), token_mask, hidden_in_kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            token_mask = batch["attention_mask"].to(device).bool()
            try:
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                )
            except _StopForward:
                pass
            else:
                raise RealignError("the model never called its first decoder block")
    finally:
        handle.remove()
    return calls


def run_block(
    block: nn.Module, calls: list[BlockCall], hidden: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Outputs of ``block`` for every batch, given that batch's input hidden states."""
    outputs = []
    for call, states in zip(calls, hidden, strict=True):
        args, kwargs = call.with_hidden(states)
        outputs.append(_first_output(block(*args, **kwargs)))
    return outputs


def collect_hessians(
    groups: list[list[LinearLayer]],
    block: nn.Module,
    calls: list[BlockCall],
    hidden: list[torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """One Hessian per group of layers sharing an input, keyed by every member's name."""
    accumulators = []
    handles = []
    current: dict[str, torch.Tensor | None] = {"mask": None}
    for group in groups:
        acc = HessianAccumulator(group[0].in_features, device)
        accumulators.append((group, acc))

        def hook(_module, args, _acc=acc):
            _acc.add(args[0], current["mask"])

        handles.append(group[0].module.register_forward_pre_hook(hook))
    try:
        for call, states in zip(calls, hidden, strict=True):
            current["mask"] = call.token_mask
            args, kwargs = call.with_hidden(states)
            block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    hessians = {}
    for group, acc in accumulators:
        hess = acc.hessian()
        for layer in group:
            hessians[layer.name] = hess
    return hessians


EditBlock = Callable[[int, list[LinearLayer], dict[str, torch.Tensor]], None]


@torch.no_grad()
def edit_blockwise(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    edit_block: EditBlock,
    *,
    device: torch.device,
    select: Callable[[LinearLayer], bool] = lambda layer: True,
    progress: bool = True,
) -> None:
    """Walk the decoder blocks in order: Hessians of the selected layers, edit, re-run.

    ``edit_block(index, layers, hessians)`` must change the weights of ``layers`` in place
    (``hessians`` maps layer name to its ``(in, in)`` Hessian on ``device``). The model starts
    on the CPU and ends there; blocks visit ``device`` one at a time.
    """
    prefix, blocks = find_decoder_blocks(model)
    model.to("cpu")
    _move_outside_blocks(model, blocks, device)
    calls = capture_block_inputs(model, blocks, batches, device)
    hidden = [call.hidden() for call in calls]
    bar = tqdm(range(len(blocks)), desc="recalibrate blocks", disable=not progress)
    for index in bar:
        block = blocks[index].to(device)
        layers = [ly for ly in block_linears(block, f"{prefix}.{index}", index) if select(ly)]
        if layers:
            first_args, first_kwargs = calls[0].with_hidden(hidden[0])

            def run_once(block=block, args=first_args, kwargs=first_kwargs) -> None:
                block(*args, **kwargs)

            groups = group_by_input(layers, run_once)
            hessians = collect_hessians(groups, block, calls, hidden, device)
            edit_block(index, layers, hessians)
            del hessians
        if index + 1 < len(blocks):
            hidden = run_block(block, calls, hidden)
        blocks[index].to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del calls, hidden
    model.to("cpu")
