"""Process tensors in a small thread pool, in order, with bounded memory.

Reading a tensor (a positional file read) and computing on it (torch kernels) both release
the GIL, so a couple of workers keep the disk and the cores busy at once. At most ``window``
results wait to be written, which bounds memory to a few tensors whatever the model size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def map_ordered(
    fn: Callable[[str], T],
    names: Sequence[str],
    *,
    workers: int = 2,
    window: int = 4,
    desc: str | None = None,
    weights: Callable[[str], int] | None = None,
) -> Iterator[tuple[str, T]]:
    """Yield ``(name, fn(name))`` in the order of ``names``, computed ahead by ``workers``.

    ``weights`` (bytes per name) drives the progress bar; without it, the bar counts tensors.
    """
    total = sum(weights(n) for n in names) if weights else len(names)
    bar = tqdm(
        total=total,
        desc=desc,
        disable=desc is None,
        unit="B" if weights else "tensor",
        unit_scale=bool(weights),
        dynamic_ncols=True,
    )
    try:
        if workers <= 1:
            for name in names:
                result = fn(name)
                bar.update(weights(name) if weights else 1)
                yield name, result
            return
        pending: deque[tuple[str, Future[T]]] = deque()
        upcoming = iter(names)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for name in upcoming:
                    pending.append((name, pool.submit(fn, name)))
                    if len(pending) >= window:
                        break
                while pending:
                    name, future = pending.popleft()
                    result = future.result()
                    following = next(upcoming, None)
                    if following is not None:
                        pending.append((following, pool.submit(fn, following)))
                    bar.update(weights(name) if weights else 1)
                    yield name, result
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        bar.close()
