"""The fine-tuned model as a stream of tensors, whether a full checkpoint or base + LoRA.

Methods never care how the user holds the fine-tuned model: :class:`FinetunedWeights` gives
θ_F one tensor at a time, adding the adapter's ``scale · B·A`` to the base tensor on the fly
when the model is a LoRA adapter, so no path merges a whole model in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint.adapter import LoraAdapter
from realignkit.checkpoint.artifact import TensorSource
from realignkit.checkpoint.reader import CheckpointReader, ensure_finite
from realignkit.errors import RealignError

PathLike = str | os.PathLike[str]


class FinetunedWeights:
    """θ_F per tensor from ``finetuned`` or from ``base`` + ``adapter``.

    ``base`` may be given beside ``finetuned`` too (DARE and IRR need θ_B); it is then
    checked to match the fine-tuned model tensor for tensor.
    """

    def __init__(
        self,
        finetuned: PathLike | None = None,
        *,
        base: PathLike | None = None,
        adapter: PathLike | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if finetuned is None and adapter is None:
            raise RealignError("give the fine-tuned model, or --base with --adapter")
        if finetuned is not None and adapter is not None:
            raise RealignError("give either the fine-tuned model or --adapter, not both")
        if adapter is not None and base is None:
            raise RealignError("--adapter needs --base, the model the adapter was trained on")
        self.allow_pickle = allow_pickle  # for loaders that run the model (IRR recalibration)
        self.base: CheckpointReader | None = (
            CheckpointReader(base, allow_pickle=allow_pickle, what="base model") if base else None
        )
        self.adapter: LoraAdapter | None = LoraAdapter(adapter) if adapter is not None else None
        if finetuned is not None:
            self.full: CheckpointReader | None = CheckpointReader(
                finetuned, allow_pickle=allow_pickle, what="fine-tuned model"
            )
            if self.base is not None:
                check_same_layout(self.full, self.base, same_set=True)
        else:
            self.full = None
            assert self.base is not None and self.adapter is not None
            self.adapter.check_against(self.base)
        main = self.full if self.full is not None else self.base
        assert main is not None
        self._main: CheckpointReader = main
        self.names: list[str] = list(main.names)
        self.config: dict[str, Any] = main.config
        # Config and tokenizer come from the main checkpoint; an adapter folder that carries
        # its own tokenizer (added chat tokens) overrides it.
        self.support_dirs: list[Path] = [main.dir] + ([self.adapter.dir] if self.adapter else [])
        self.what = "fine-tuned model"
        self.dir: Path = main.dir
        self.location = main.location if self.full is not None else None

    @property
    def architecture(self) -> str:
        return self._main.architecture

    def describe(self) -> dict[str, str]:
        """Where θ_F comes from, for model cards and metadata."""
        if self.full is not None:
            return {"finetuned": str(self.full.dir)}
        assert self.base is not None and self.adapter is not None
        return {"base": str(self.base.dir), "adapter": str(self.adapter.dir)}

    def __contains__(self, name: object) -> bool:
        return name in self._main

    def shape(self, name: str) -> tuple[int, ...]:
        return self._main.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._main.dtype(name)

    def nbytes(self, name: str) -> int:
        return self._main.nbytes(name)

    def get(self, name: str) -> torch.Tensor:
        """θ_F for ``name`` in its stored dtype."""
        if self.full is not None:
            return self.full.get(name)
        assert self.base is not None and self.adapter is not None
        if name in self.adapter.full_tensors():  # modules_to_save, saved embedding layers
            weight = self.adapter.full_tensor(name)
            ensure_finite(weight, name, f"adapter {str(self.adapter.dir)!r}")
        else:
            weight = self.base.get(name)
        if name in self.adapter.target_weights():
            delta = self.adapter.delta(name, torch.float32)
            ensure_finite(delta, name, f"adapter {str(self.adapter.dir)!r}")
            weight = (weight.float() + delta).to(weight.dtype)
        return weight

    def get_base(self, name: str) -> torch.Tensor:
        """θ_B for ``name`` (needs ``base``)."""
        if self.base is None:
            raise RealignError("this step needs the base model (--base)")
        return self.base.get(name)

    def close(self) -> None:
        for reader in (self.full, self.base):
            if reader is not None:
                reader.close()
        if self.adapter is not None:
            self.adapter.close()

    def __enter__(self) -> FinetunedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def where(source: Any) -> str:
    """The file (or folder) a tensor of ``source`` is read from, for error messages."""
    return str(getattr(source, "location", None) or source.dir)


def check_same_layout(
    a: TensorSource,
    b: TensorSource,
    names: list[str] | None = None,
    *,
    same_set: bool = False,
) -> None:
    """``a`` and ``b`` describe one model: same architecture and vocabulary, every tensor of
    ``names`` (default: all of ``a``) in ``b`` with the same shape, and with ``same_set`` no
    tensor of ``b`` absent from ``a``. Otherwise a one-line error naming the first offending
    tensor and the file it was expected in.

    ``a`` and ``b`` are any :class:`~realignkit.checkpoint.artifact.TensorSource`: checkpoints,
    :class:`FinetunedWeights`, safety vectors, Fisher scores.
    """
    if a.architecture != b.architecture and "unknown" not in (a.architecture, b.architecture):
        raise RealignError(
            f"{a.what} is a {a.architecture} but {b.what} is a {b.architecture}: "
            "the models must share one architecture"
        )
    vocab_a = (getattr(a, "config", None) or {}).get("vocab_size")
    vocab_b = (getattr(b, "config", None) or {}).get("vocab_size")
    if vocab_a is not None and vocab_b is not None and vocab_a != vocab_b:
        raise RealignError(
            f"the {a.what} has a vocabulary of {vocab_a} tokens but the {b.what} {where(b)!r} "
            f"has {vocab_b}: they are not the same model family"
        )
    for name in names if names is not None else a.names:
        if name not in b:
            raise RealignError(
                f"tensor {name!r} of the {a.what} is missing from the {b.what} {where(b)!r}"
            )
        if tuple(a.shape(name)) != tuple(b.shape(name)):
            raise RealignError(
                f"tensor {name!r} has shape {tuple(a.shape(name))} in the {a.what} but "
                f"{tuple(b.shape(name))} in the {b.what}"
            )
    if same_set:
        for name in b.names:
            if name not in a:
                raise RealignError(
                    f"tensor {name!r} of the {b.what} is missing from the {a.what} {where(a)!r}"
                )
