"""The streaming pipeline: read ahead, compute in order, write behind, with bounded memory.

A streaming pass reads every input tensor once, computes one output tensor from them and
writes it. Done one after another, the disk waits for the arithmetic and the arithmetic for
the disk (on this project's machine the wall time of RESTA was 1.4-1.9x its CPU time). So
three stages overlap, each in its own thread, joined by :class:`BoundedQueue` s:

    reader ─ READ_AHEAD inputs ─▶ workers compute, in order ─ WRITE_BEHIND results ─▶ writer

* one reader thread loads the inputs of the next tensors while the current one is computed
  (:func:`read_ahead`); a file read and a tensor copy release the GIL;
* ``workers`` threads compute (:func:`map_ordered`), results come out in the order of the names;
* the writer thread writes finished tensors while the next ones are computed
  (:class:`WriteBehind`, used by :meth:`CheckpointWriter.stream
  <realignkit.checkpoint.writer.CheckpointWriter.stream>`).

Memory holds the queues' few tensors whatever the model size. An error in any thread is
raised in the caller's thread as the same exception, so it reads as it would without threads.
``REALIGNKIT_OVERLAP=0`` runs each tensor's read, computation and write one after another
(the results are the same bits either way: only the timing differs).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
L = TypeVar("L")

READ_AHEAD = 2
"""Loaded inputs waiting for a worker (the reader thread holds one more while it reads)."""
WRITE_BEHIND = 2
"""Finished results waiting for the writer thread (which holds one more while it writes)."""
OVERLAP_ENV = "REALIGNKIT_OVERLAP"


def overlap_enabled() -> bool:
    """Whether streaming passes overlap reading, computing and writing (default: yes)."""
    return os.environ.get(OVERLAP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Aborted(Exception):
    """The other side of a :class:`BoundedQueue` stopped without an error of its own."""


class BoundedQueue(Generic[T]):
    """A FIFO between one producer thread and one consumer thread that never holds more than
    ``depth`` items: :meth:`put` waits for room. Either side can end it:

    * the producer :meth:`close` s it, with the error it failed with if any: the consumer
      gets every item put before, then that error;
    * the consumer :meth:`abort` s it, with the error it failed with if any: a waiting or
      later :meth:`put` raises that error (or :class:`Aborted`), so the producer stops.

    ``high_water`` is the most items it ever held.
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"a bounded queue needs a depth of at least 1, not {depth}")
        self.depth = depth
        self.high_water = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._close_error: BaseException | None = None
        self._aborted = False
        self.abort_error: BaseException | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full; raises once it is aborted."""
        with self._cond:
            while len(self._items) >= self.depth and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise self.abort_error if self.abort_error is not None else Aborted()
            if self._closed:
                raise RuntimeError("put on a closed queue")
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """No more items (the producer is done, or failed with ``error``)."""
        with self._cond:
            self._closed, self._close_error = True, error
            self._cond.notify_all()

    def abort(self, error: BaseException | None = None) -> None:
        """The consumer is gone (failed with ``error``, or stopped): drop what is queued."""
        with self._cond:
            self._aborted = True
            if self.abort_error is None:
                self.abort_error = error
            self._items.clear()
            self._cond.notify_all()

    def __iter__(self) -> Iterator[T]:
        """The items in order until the queue is closed (then the producer's error, if any)
        or aborted."""
        while True:
            with self._cond:
                while not self._items and not self._closed and not self._aborted:
                    self._cond.wait()
                if self._aborted:
                    return
                if not self._items:
                    if self._close_error is not None:
                        raise self._close_error
                    return
                item = self._items.popleft()
                self._cond.notify_all()
            yield item


def read_ahead(
    load: Callable[[str], L], names: Iterable[str], depth: int = READ_AHEAD
) -> Generator[tuple[str, L], None, None]:
    """Yield ``(name, load(name))`` in order, loaded by one background thread that keeps at
    most ``depth`` loaded values waiting (plus the one it is loading). An exception in
    ``load`` is raised here, at that name's turn; closing the iterator stops the thread."""
    queue: BoundedQueue[tuple[str, L]] = BoundedQueue(depth)

    def run() -> None:
        try:
            for name in names:
                queue.put((name, load(name)))
        except Aborted:
            return
        except BaseException as err:  # re-raised in the consumer's thread
            queue.close(err)
            return
        queue.close()

    thread = threading.Thread(target=run, name="realignkit-read-ahead", daemon=True)
    thread.start()
    try:
        yield from queue
    finally:
        queue.abort()
        thread.join()


class WriteBehind(Generic[T]):
    """Hand items to ``write`` in one background thread, in order, at most ``depth`` waiting.

    :meth:`put` waits for room and raises the writer thread's exception once it has failed;
    :meth:`finish` waits until everything is written (raising that exception likewise);
    :meth:`stop` drops what is queued and waits for the write in progress, so that nothing
    touches the output once it returns.
    """

    def __init__(self, write: Callable[[T], Any], depth: int = WRITE_BEHIND) -> None:
        self._write = write
        self._queue: BoundedQueue[T] = BoundedQueue(depth)
        self._thread = threading.Thread(target=self._run, name="realignkit-writer", daemon=True)
        self._thread.start()

    @property
    def queue(self) -> BoundedQueue[T]:
        return self._queue

    def _run(self) -> None:
        try:
            for item in self._queue:
                self._write(item)
        except BaseException as err:  # re-raised in the producer's thread
            self._queue.abort(err)

    def put(self, item: T) -> None:
        self._queue.put(item)

    def finish(self) -> None:
        self._queue.close()
        self._thread.join()
        if self._queue.abort_error is not None:
            raise self._queue.abort_error

    def stop(self) -> None:
        self._queue.abort()
        self._thread.join()


def map_ordered(
    fn: Callable[[Any], T],
    names: Sequence[str],
    *,
    workers: int = 2,
    window: int = 4,
    desc: str | None = None,
    weights: Callable[[str], int] | None = None,
    load: Callable[[str], Any] | None = None,
    overlap: bool | None = None,
) -> Generator[tuple[str, T], None, None]:
    """Yield ``(name, fn(load(name)))`` in the order of ``names``, computed ahead by ``workers``
    (``fn(name)`` without ``load``).

    With ``overlap`` (default: :func:`overlap_enabled`) and a ``load``, the loads run in the
    reader thread (:func:`read_ahead`) and at most ``workers`` results are pending; without,
    each worker loads and computes, at most ``window`` results pending. ``weights`` (bytes
    per name) drives the progress bar; without it, the bar counts tensors.
    """
    overlap = overlap_enabled() if overlap is None else overlap
    total = sum(weights(n) for n in names) if weights else len(names)
    bar = tqdm(
        total=total,
        desc=desc,
        disable=desc is None,
        unit="B" if weights else "tensor",
        unit_scale=bool(weights),
        dynamic_ncols=True,
    )
    items: Iterator[tuple[str, Any]]
    if load is not None and overlap:
        items, compute = read_ahead(load, names), fn
        # The queues downstream and upstream hold the tensors that wait; the workers only
        # need one result each in hand.
        window = max(workers, 1)
    else:
        items = ((n, n) for n in names)
        compute = fn if load is None else (lambda n: fn(load(n)))
    try:
        if workers <= 1:
            for name, arg in items:
                result = compute(arg)
                bar.update(weights(name) if weights else 1)
                yield name, result
            return
        pending: deque[tuple[str, Future[T]]] = deque()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for name, arg in items:
                    pending.append((name, pool.submit(compute, arg)))
                    if len(pending) >= window:
                        break
                while pending:
                    name, future = pending.popleft()
                    result = future.result()
                    following = next(items, None)
                    if following is not None:
                        pending.append((following[0], pool.submit(compute, following[1])))
                    bar.update(weights(name) if weights else 1)
                    yield name, result
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        if hasattr(items, "close"):
            items.close()  # stops the reader thread now, not when the generator is collected
        bar.close()
