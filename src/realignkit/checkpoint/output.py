"""Where an output may go, and how it replaces an old one: the rules that keep inputs safe.

Every writing path (the :class:`~realignkit.checkpoint.writer.CheckpointWriter` and the CLI's
command wrapper) asks :func:`check_output_location` before anything is touched:

* an output that *is*, *contains*, *lies inside* or *resolves through symlinks to* an input is
  refused, with or without ``--overwrite``;
* ``--overwrite`` replaces only a folder realignkit wrote (it carries :data:`OUTPUT_MARKER`),
  never a user's own folder or file;
* the replacement is a swap: the new folder is complete before the old one goes
  (:func:`swap_into_place`), so a crash leaves either the old output or the new one.

Single files (reports, tables, plots, caches) are replaced the same way, through
:func:`atomic_file`: written beside the destination under a hidden name, renamed onto it
(:func:`write_text_atomic`, :func:`write_json_atomic` and :func:`write_jsonl_atomic` for text).

Inputs register themselves while they are open (:func:`track_input`), so the writer sees every
model, adapter and safety vector the running method reads, however it was named.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from realignkit.errors import RealignError

# Written into every folder realignkit writes; only such folders may be replaced.
OUTPUT_MARKER = "realignkit.json"

# Open readers (models, adapters, safety vectors) → the folder they read.
_OPEN_INPUTS: weakref.WeakKeyDictionary[object, list[Path]] = weakref.WeakKeyDictionary()


def track_input(owner: object, *paths: str | os.PathLike[str]) -> None:
    """Record that ``owner`` reads ``paths`` until :func:`untrack_input` (or its collection);
    names that are not local paths (hub ids) are skipped."""
    local = [Path(p).expanduser() for p in paths]
    _OPEN_INPUTS[owner] = [p for p in local if p.exists() or p.is_symlink()]


def untrack_input(owner: object) -> None:
    _OPEN_INPUTS.pop(owner, None)


def open_inputs() -> list[Path]:
    """The folders of every input currently open in this process."""
    return [path for paths in list(_OPEN_INPUTS.values()) for path in paths]


def _spellings(path: Path) -> set[Path]:
    """The path as written (absolute) and as it resolves through symlinks."""
    absolute = Path(os.path.abspath(path.expanduser()))
    return {absolute, absolute.resolve()}


def check_output_location(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is, contains, lies inside or resolves to any of ``inputs``."""
    out_paths = _spellings(Path(out))
    for raw in inputs:
        for given in _spellings(Path(raw)):
            for target in out_paths:
                if target == given:
                    how = "is"
                elif target.is_relative_to(given):
                    how = "lies inside"
                elif given.is_relative_to(target):
                    how = "contains"
                else:
                    continue
                raise RealignError(
                    f"output {str(out)!r} {how} the input {str(raw)!r}; nothing was written: "
                    "choose an --out outside every input"
                )


def is_realignkit_output(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / OUTPUT_MARKER).is_file()


def check_replaceable(out: Path, overwrite: bool) -> None:
    """An existing ``out`` may be replaced only with ``overwrite`` and only if realignkit wrote
    it (a user's own folder or file is never deleted)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise RealignError(f"output {str(out)!r} exists; pass --overwrite to replace it")
    if not is_realignkit_output(out):
        raise RealignError(
            f"output {str(out)!r} exists and was not written by realignkit (no {OUTPUT_MARKER}); "
            "--overwrite replaces only realignkit's own outputs: remove it yourself or choose "
            "another --out"
        )


def temporary_name(out: Path, kind: str = "tmp") -> Path:
    """``.NAME.tmp-PID-HEX`` beside ``out``: hidden, and the PID tells a stale one apart."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write; renamed onto ``path`` when the block
    ends without error, deleted otherwise. A reader sees the old file or the new one, never
    half of one. The temporary name keeps no suffix: a writer that infers a format from the
    name (matplotlib) must be told it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there when the block failed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete ``.NAME.tmp-*`` / ``.NAME.old-*`` folders left beside ``out`` by a killed run
    (their process is gone); a run still writing keeps its own."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            parts = path.name.rsplit(".", 1)[-1].split("-")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.restype = ctypes.c_int
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_into_place(new: Path, out: Path, *, overwrite: bool) -> None:
    """Put the finished folder ``new`` at ``out``; an old realignkit output there is swapped
    out in one atomic step (two renames where the kernel cannot exchange) and then deleted."""
    if not (out.exists() or out.is_symlink()):
        new.rename(out)
        return
    check_replaceable(out, overwrite)  # again: it may have changed while we were writing
    if _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old output
        return
    trash = temporary_name(out, "old")
    out.rename(trash)
    new.rename(out)
    shutil.rmtree(trash, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Replace ``path`` with ``obj`` as indented JSON (non-ASCII kept as it is; anything JSON
    cannot hold, such as a path, as its ``str``)."""
    return write_text_atomic(
        path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    )


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Replace ``path`` with one JSON line per row, streamed (a large file is never one string)."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return Path(path)
