"""Find a decoder model's repeated blocks and the linear layers inside them, from the model itself.

No table of architectures: the decoder blocks are the largest ``nn.ModuleList`` whose children
all share one class and contain linear layers (``model.layers`` in Llama, Qwen2 and Mistral,
``transformer.h`` in GPT-2). Linear layers are ``nn.Linear`` and GPT-2's ``Conv1D``, whose
weight is stored transposed (``(in, out)``); :class:`LinearLayer` hides that difference so the
rest of IRR always sees ``(out, in)``.

Layers that read the same input tensor (q/k/v projections, gate/up projections) share one
Hessian. That is detected by running the block once with hooks rather than by names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from realignkit.errors import RealignError


def linear_types() -> tuple[type, ...]:
    """``nn.Linear`` and, when transformers is installed, its ``Conv1D``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's Conv1D: its weight is ``(in, out)``."""
    return not isinstance(module, nn.Linear)


@dataclass
class LinearLayer:
    """One linear layer of a decoder block.

    ``name`` is its module path in the model (``model.layers.3.mlp.down_proj``), so the weight
    tensor in the checkpoint is ``name + ".weight"``; ``short`` is the path inside the block
    (``mlp.down_proj``), used by ``--modules`` selection and in reports.
    """

    name: str
    short: str
    block_index: int
    module: nn.Module

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def transposed(self) -> bool:
        return is_transposed(self.module)

    @property
    def in_features(self) -> int:
        weight = self.module.weight
        return weight.shape[0] if self.transposed else weight.shape[1]

    def to_kernel(self, tensor: torch.Tensor) -> torch.Tensor:
        """A checkpoint-oriented tensor of this layer's weight shape as ``(out, in)``."""
        return tensor.t() if self.transposed else tensor

    def from_kernel(self, tensor: torch.Tensor) -> torch.Tensor:
        """Back from ``(out, in)`` to the orientation this layer stores."""
        return tensor.t().contiguous() if self.transposed else tensor.contiguous()

    def set_weight(self, kernel_weight: torch.Tensor) -> None:
        """Write an ``(out, in)`` weight into the running module (its dtype and device)."""
        weight = self.module.weight
        with torch.no_grad():
            weight.copy_(self.from_kernel(kernel_weight).to(weight.dtype))


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module path and the ``ModuleList`` of the model's repeated decoder blocks."""
    types = linear_types()
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(isinstance(m, types) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise RealignError(
            f"{type(model).__name__}: no list of repeated decoder blocks with linear layers found"
        )
    return best[1], best[2]


def block_linears(block: nn.Module, prefix: str, block_index: int) -> list[LinearLayer]:
    """The linear layers of one block, in module order, with their full names."""
    types = linear_types()
    layers = []
    for short, module in block.named_modules():
        if isinstance(module, types) and getattr(module, "weight", None) is not None:
            layers.append(LinearLayer(f"{prefix}.{short}", short, block_index, module))
    return layers


def decoder_linears(model: nn.Module) -> list[LinearLayer]:
    """Every linear layer of every decoder block (the default set IRR edits)."""
    prefix, blocks = find_decoder_blocks(model)
    return [
        layer
        for index, block in enumerate(blocks)
        for layer in block_linears(block, f"{prefix}.{index}", index)
    ]


def select_modules(layers: list[LinearLayer], modules: list[str] | None) -> list[LinearLayer]:
    """Keep the layers whose last name part (``q_proj``) or in-block path is in ``modules``."""
    if not modules:
        return layers
    wanted = set(modules)
    chosen = [ly for ly in layers if ly.short in wanted or ly.short.split(".")[-1] in wanted]
    known = sorted({ly.short.split(".")[-1] for ly in layers})
    unknown = [
        m for m in wanted if not any(m in (ly.short, ly.short.split(".")[-1]) for ly in layers)
    ]
    if unknown:
        raise RealignError(
            f"--modules: no linear layer named {unknown[0]!r} in the decoder blocks; "
            f"they are {', '.join(known)}"
        )
    return chosen


def group_by_input(
    layers: list[LinearLayer], run_once: Callable[[], None]
) -> list[list[LinearLayer]]:
    """Groups of layers that receive the very same input tensor during ``run_once()``.

    Each layer's input is held until grouping is done, so two live tensors with the same data
    pointer, shape and strides really are one tensor (no freed-and-reused memory confusion).
    """
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(layers):

        def hook(_module, args, _index=index):
            if _index not in seen:
                seen[_index] = args[0]

        handles.append(layer.module.register_forward_pre_hook(hook))
    try:
        run_once()
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[tuple, list[LinearLayer]] = {}
    for index, layer in enumerate(layers):
        if index not in seen:
            raise RealignError(f"layer {layer.name} was not called when its block ran")
        x = seen[index]
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
        groups.setdefault(key, []).append(layer)
    seen.clear()
    return list(groups.values())
