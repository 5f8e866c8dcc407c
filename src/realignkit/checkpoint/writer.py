"""Bounded-memory, all-or-nothing writing of checkpoint folders.

:class:`CheckpointWriter` collects tensors into shards of at most ``max_shard_size`` bytes and
writes each shard as soon as it is full, so memory holds at most one shard plus the tensor in
hand. Everything goes into a hidden temporary folder next to the destination, renamed into
place only when the ``with`` block ends without error: a crash, a full disk or a bad tensor
leaves no half model behind. Where the output may go and what it may replace is decided by
:mod:`realignkit.checkpoint.output` before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from realignkit._version import __version__
from realignkit.checkpoint.direct import ShardFile
from realignkit.checkpoint.output import (
    OUTPUT_MARKER,
    check_output_location,
    check_replaceable,
    open_inputs,
    remove_stale_temporaries,
    swap_into_place,
    temporary_name,
)
from realignkit.checkpoint.reader import SAFETENSORS_DTYPES
from realignkit.checkpoint.stream import WriteBehind, map_ordered, overlap_enabled
from realignkit.errors import RealignError

T = TypeVar("T")

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}

# Files that travel with the weights: configuration, generation settings, tokenizer.
SUPPORT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """``"2GB"`` / ``"500MB"`` / ``"64KiB"`` / an int → bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().replace(" ", "")
    for unit, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    try:
        return int(text.rstrip("B"))
    except ValueError as err:
        raise RealignError(f"cannot read size {size!r}; use e.g. 2GB or 500MB") from err


@dataclass(frozen=True)
class TensorSpec:
    """One planned output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * self.dtype.itemsize


def split_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """``specs`` in order, cut into shards of at most ``max_bytes`` (a larger tensor alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def shard_header(specs: Sequence[TensorSpec]) -> bytes:
    """The safetensors header for ``specs`` laid out back to back, padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": DTYPE_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library wraps it (safetensors' Rust writer reports
    ``IoError(Os { code: 28, kind: StorageFull ... })``)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text or "QuotaExceeded" in text


class CheckpointWriter:
    """Write a folder of safetensors shards (+ index) atomically.

    >>> with CheckpointWriter("out", max_shard_size="2GB") as out:
    ...     out.add("model.embed_tokens.weight", tensor)
    ...     out.copy_support_files(source_dir)
    ...     out.write_card(card_text)
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_shard_size: int | str = "1GB",
        weights_name: str = "model",
        plan: Sequence[TensorSpec] | None = None,
    ) -> None:
        given = Path(out_dir).expanduser()
        # Checked on the path as given (a symlink to an input is refused), then resolved.
        check_output_location(given, open_inputs())
        self.out_dir = Path(os.path.abspath(given))
        check_replaceable(self.out_dir, overwrite)
        self.max_shard_bytes = parse_size(max_shard_size)
        self.weights_name = weights_name
        self.tmp_dir = temporary_name(self.out_dir)
        self._overwrite = overwrite
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self.total_bytes = 0
        self._open = False
        self._plan = list(plan) if plan is not None else None
        self._planned_shards: list[list[TensorSpec]] = []
        self._position = 0  # next planned tensor
        self._shard_file: ShardFile | None = None
        self._behind: WriteBehind[Mapping[str, torch.Tensor]] | None = None  # during stream
        self._results: Generator[Any, None, None] | None = None  # the stream's pipeline
        if self._plan is not None:
            self._planned_shards = split_shards(self._plan, self.max_shard_bytes)
        self._shard_of = {s.name: i for i, shard in enumerate(self._planned_shards) for s in shard}

    def _planned_file_name(self, index: int) -> str:
        count = len(self._planned_shards)
        if count == 1:
            return f"{self.weights_name}.safetensors"
        return f"{self.weights_name}-{index + 1:05d}-of-{count:05d}.safetensors"

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> CheckpointWriter:
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise RealignError(
                f"output {str(self.out_dir)!r}: {str(self.out_dir.parent)!r} is not a folder"
            ) from err
        remove_stale_temporaries(self.out_dir)
        try:
            self.tmp_dir.mkdir()
            self._open = True
        except BaseException:  # Ctrl-C right here: __exit__ will not run, so clean up now
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._discard()
            if is_disk_full(exc):
                raise self._disk_full() from exc
            return
        try:
            self._finish()
        except BaseException as err:
            self._discard()
            if is_disk_full(err):
                raise self._disk_full() from err
            raise
        finally:
            self._open = False

    def _discard(self) -> None:
        """Delete the unfinished temporary folder (the destination was never touched)."""
        # A stream left suspended (its caller failed between two tensors): its threads first.
        self._stop_stream()
        if self._shard_file is not None:
            # Its staged tail is not written: irrelevant, the file goes.
            with contextlib.suppress(OSError):
                self._shard_file.discard()
            self._shard_file = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._open = False

    def _disk_full(self) -> RealignError:
        return RealignError(
            f"no space left on the device while writing {str(self.out_dir)!r}; nothing was "
            "written: free some space and run again"
        )

    # -- content ------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The temporary folder being written (for extra files a caller adds)."""
        return self.tmp_dir

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; a full shard is written to disk at once."""
        if not self._open:
            raise RuntimeError("CheckpointWriter.add outside its with block")
        if name in self._names:
            raise RealignError(f"tensor {name!r} written twice")
        if self._plan is not None:
            self._write_planned(name, tensor)
            return
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += nbytes
        self._names.add(name)
        self.total_bytes += nbytes

    def stream(
        self,
        produce: Callable[[Any], tuple[Mapping[str, torch.Tensor], T]],
        names: Sequence[str],
        *,
        workers: int = 1,
        desc: str | None = None,
        weights: Callable[[str], int] | None = None,
        load: Callable[[str], Any] | None = None,
        overlap: bool | None = None,
    ) -> Iterator[tuple[str, T]]:
        """The one streaming loop of every output: ``produce(load(name))`` (``produce(name)``
        without ``load``) gives the tensors to store for ``name`` (by their stored names) and
        anything else about it; the tensors are added in the order of ``names``, and
        ``(name, anything else)`` is yielded after each.

        The pipeline is :mod:`realignkit.checkpoint.stream`'s: with ``overlap`` (default:
        :func:`~realignkit.checkpoint.stream.overlap_enabled`) a reader thread runs ``load``
        ahead, ``workers`` threads compute, and a writer thread adds the results while the
        next ones are computed (what a caller sees after the loop is all written). Memory
        holds the few tensors in the pipeline's queues plus the shard being filled, whatever
        the number of names.
        """
        overlap = overlap_enabled() if overlap is None else overlap
        results = map_ordered(
            produce,
            names,
            workers=workers,
            desc=desc,
            weights=weights,
            load=load,
            overlap=overlap,
        )
        self._results = results
        try:
            if not overlap:
                for name, (tensors, info) in results:
                    self._add_all(tensors)
                    yield name, info
                return
            self._behind = WriteBehind(self._add_all)
            for name, (tensors, info) in results:
                self._behind.put(tensors)
                yield name, info
            self._behind.finish()
        finally:
            self._stop_stream()

    def _add_all(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            self.add(key, tensor)

    def _stop_stream(self) -> None:
        """Stop a stream's threads: wait for the writer thread's write in progress and drop
        what is queued (nothing touches the temporary folder afterwards), stop the reader
        thread and the workers (nothing reads the inputs once they are closed)."""
        if self._behind is not None:
            self._behind.stop()
            self._behind = None
        if self._results is not None:
            self._results.close()
            self._results = None

    def _write_planned(self, name: str, tensor: torch.Tensor) -> None:
        """Append one planned tensor to its shard file (opening the shard, header first)."""
        assert self._plan is not None
        if self._position >= len(self._plan) or self._plan[self._position].name != name:
            raise RuntimeError(f"tensor {name!r} is not the next one in the writer's plan")
        spec = self._plan[self._position]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"tensor {name!r} does not match the writer's plan")
        shard_index = self._shard_of[name]
        shard = self._planned_shards[shard_index]
        if shard[0] is spec:
            path = self.tmp_dir / self._planned_file_name(shard_index)
            self._shard_file = ShardFile(path)
            self._shard_file.write(shard_header(shard))
            self._shards.append((path, [s.name for s in shard]))
        assert self._shard_file is not None
        if spec.nbytes:
            flat = tensor.detach().to("cpu").contiguous().view(-1)
            self._shard_file.write(memoryview(flat.view(torch.uint8).numpy()))
        if shard[-1] is spec:
            self._shard_file.close()
            self._shard_file = None
        self._position += 1
        self._names.add(name)
        self.total_bytes += spec.nbytes

    def _flush(self) -> None:
        if not self._pending:
            return
        index = len(self._shards) + 1
        path = self.tmp_dir / f"{self.weights_name}-part{index:05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending = {}
        self._pending_bytes = 0

    def copy_support_files(self, *source_dirs: str | os.PathLike[str]) -> list[str]:
        """Copy config, generation config and tokenizer files; later folders win."""
        copied = []
        for source_dir in source_dirs:
            for name in SUPPORT_FILES:
                src = Path(source_dir) / name
                if src.is_file():
                    shutil.copy2(src, self.tmp_dir / name)
                    copied.append(name)
        return copied

    def write_card(self, text: str) -> None:
        (self.tmp_dir / "README.md").write_text(text, encoding="utf-8")

    def write_json(self, filename: str, obj: Any) -> None:
        (self.tmp_dir / filename).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    # -- the end ------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self._plan is not None:
            if self._position != len(self._plan):
                missing = self._plan[self._position].name
                raise RealignError(f"output incomplete: tensor {missing!r} was never written")
            if len(self._shards) > 1:
                weight_map = {n: p.name for p, names in self._shards for n in names}
                index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
                self.write_json(f"{self.weights_name}.safetensors.index.json", index)
            self._publish()
            return
        self._flush()
        count = len(self._shards)
        if count == 1:
            self._shards[0][0].rename(self.tmp_dir / f"{self.weights_name}.safetensors")
        elif count > 1:
            weight_map: dict[str, str] = {}
            for i, (path, names) in enumerate(self._shards, start=1):
                final = f"{self.weights_name}-{i:05d}-of-{count:05d}.safetensors"
                path.rename(self.tmp_dir / final)
                weight_map.update(dict.fromkeys(names, final))
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            self.write_json(f"{self.weights_name}.safetensors.index.json", index)
        self._publish()

    def _publish(self) -> None:
        """Mark the finished folder as realignkit's and swap it into place.

        The mark is the output's metadata file: where a method already wrote one (the
        executor's ``realignkit.json``), the marker's fields are added to it.
        """
        marker = self.tmp_dir / OUTPUT_MARKER
        meta = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
        meta.update(
            written_by="realignkit",
            written=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(shlex.quote(a) for a in sys.argv),
        )
        meta.setdefault("realignkit_version", __version__)
        self.write_json(OUTPUT_MARKER, meta)
        _make_durable(self.tmp_dir)
        # Inputs opened after the writer was made (they are open now) are checked too.
        check_output_location(self.out_dir, open_inputs())
        swap_into_place(self.tmp_dir, self.out_dir, overwrite=self._overwrite)
        _fsync_path(self.out_dir.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_durable(folder: Path) -> None:
    """Every file of the finished folder, and the folder itself, on the device before it is
    renamed into place: a crash after the rename cannot leave a published folder with
    missing or short files. Shards written with direct I/O are already there (cheap)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync_path(path)
    _fsync_path(folder)
