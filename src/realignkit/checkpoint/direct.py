"""Direct I/O (``O_DIRECT``) for the big tensors a streaming merge reads once and writes once.

A merge reads every input byte once and writes every output byte once: keeping them in the
page cache buys nothing and costs a page of fresh memory per 4 KiB, on both sides. On this
project's machine (a VM whose free memory goes back to the host) touching fresh memory ran at
0.3-0.7 GB/s, slower than the disk: reading the inputs of RESTA at 1.1B shapes and writing its
output through the page cache (one thread, reused buffers) took 25-72 s, the same bytes with
``O_DIRECT`` 5.3 s (``benchmarks/bench_resta.py`` measures the end-to-end effect). Direct
writes are also on the device when they return, so the ``fsync`` before the output folder is
renamed into place costs little.

``O_DIRECT`` needs file offsets, lengths and memory addresses aligned to the device's block
(:data:`ALIGN` covers every common one). Where a file system refuses it (``EINVAL`` on open or
on the first transfer), the buffered path does the same job, byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os

import torch

ALIGN = 4096
DIRECT_MIN_BYTES = 1 << 20
"""Tensors smaller than this are read through the page cache: their share of the bytes is
tiny, and a cached small tensor (norms, biases) read again costs a memory copy, not a disk
access. Tests lower it to run the direct path on tiny models."""
STAGE_BYTES = 16 << 20  # one aligned staging buffer per open shard file, reused


def _refused(err: OSError) -> bool:
    """The file system does not do direct I/O (as opposed to a real I/O error)."""
    return err.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def open_direct_reader(path: os.PathLike[str] | str) -> int | None:
    """A read-only ``O_DIRECT`` descriptor of ``path``, or None where that is not supported."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_RDONLY | flag)
    except OSError as err:
        if _refused(err):
            return None
        raise


def read_direct(
    fd: int, start: int, end: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor | None:
    """Bytes ``[start, end)`` of the file as a tensor of ``dtype`` and ``shape``, read with
    ``O_DIRECT`` straight into its own memory; None when the transfer is refused (the caller
    reads it the buffered way) or when ``start`` does not suit ``dtype``'s alignment."""
    if start % dtype.itemsize:
        return None
    low = start - start % ALIGN
    high = -(-end // ALIGN) * ALIGN
    raw = torch.empty(high - low + ALIGN, dtype=torch.uint8)
    pad = -raw.data_ptr() % ALIGN
    window = raw[pad : pad + high - low]
    view = memoryview(window.numpy())
    done, need = 0, end - low
    try:
        while done < need:
            count = os.preadv(fd, [view[done:]], low + done)
            if count == 0:
                return None  # truncated: the buffered read names the file and tensor
            done += count
    except OSError as err:
        if _refused(err):
            return None
        raise
    return window[start - low : end - low].view(dtype).view(shape)


class ShardFile:
    """A new file written sequentially, with ``O_DIRECT`` through an aligned staging buffer
    where the file system allows it, else buffered. Durability is the writer's job: it fsyncs
    every file of the finished folder once, before the rename.

    The staging copy costs a memory pass (GB/s) and spares the page cache's fresh pages.
    """

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = path
        self.size = 0
        self._stage: mmap.mmap | None = None
        self._filled = 0
        self._buffered = False
        flag = getattr(os, "O_DIRECT", 0)
        self._fd = -1
        if flag:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
                self._stage = mmap.mmap(-1, STAGE_BYTES)
            except OSError as err:
                if not _refused(err):
                    raise
        if self._fd < 0:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self._stage is None or self._buffered:
            self._write_all(view)
            return
        while len(view):
            take = min(len(view), STAGE_BYTES - self._filled)
            self._stage[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == STAGE_BYTES:
                self._drain(STAGE_BYTES)

    def _drain(self, length: int) -> None:
        """Write the first ``length`` (aligned) staged bytes; where the file system refuses
        the direct transfer, reopen the file buffered at the same place and go on that way."""
        assert self._stage is not None
        with memoryview(self._stage) as stage:
            try:
                self._write_all(stage[:length])
            except OSError as err:
                if not _refused(err):
                    raise
                position = os.lseek(self._fd, 0, os.SEEK_CUR)
                os.close(self._fd)
                self._fd = os.open(self.path, os.O_WRONLY)
                os.lseek(self._fd, position, os.SEEK_SET)
                self._write_all(stage[:length])
                self._buffered = True
        self._filled = 0

    def _write_all(self, view: memoryview) -> None:
        while len(view):
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        """Write what is staged (padded to the block, then cut back to the true size)."""
        try:
            if self._stage is not None and self._filled:
                tail = self._filled
                padded = -(-tail // ALIGN) * ALIGN
                self._stage[tail:padded] = bytes(padded - tail)
                self._filled = padded
                self._drain(padded)
                os.ftruncate(self._fd, self.size)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close without flushing (the file is being deleted)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._stage is not None:
            # After a failed write the traceback may still hold a view of the buffer; then
            # the buffer is freed with its last view instead (closing it would raise).
            with contextlib.suppress(BufferError):
                self._stage.close()
            self._stage = None
