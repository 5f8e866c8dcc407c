"""HumanEval: assemble programs from completions and run their tests in a sandbox.

Every program runs in its own Python process that

* starts in a fresh temporary folder (its cwd and HOME), with a minimal environment,
* has limits on address space (``memory_mb``), CPU seconds, written file size and open
  files, set with ``resource.setrlimit`` inside the child before any generated code runs,
* is killed with its whole process group after ``timeout`` seconds of wall time,
* has no network: it runs in a new network namespace (``unshare --net``) where that works,
  and in every case finds ``socket``, ``subprocess``, ``os.system``, ``os.kill``, file
  deletion and the like replaced by functions that raise,
* reports success only by printing a per-run random token after the tests passed, so
  ``sys.exit(0)`` or ``os._exit(0)`` in a completion counts as a failure.

This is protection against accidents and sloppy code, not a security boundary against an
adversary (``ctypes`` can undo any of it): run untrusted models in a container.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

# Runs first in the child: limits, then the guard, then the program from stdin.
_RUNNER = r"""
import os, resource, sys
_exit, _write, _flush = os._exit, sys.stdout.write, sys.stdout.flush
def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
_limit(resource.RLIMIT_AS, @MEMORY_BYTES@)
_limit(resource.RLIMIT_CPU, @CPU_SECONDS@)
_limit(resource.RLIMIT_FSIZE, @FILE_BYTES@)
_limit(resource.RLIMIT_NOFILE, 64)
_limit(resource.RLIMIT_CORE, 0)
token = sys.stdin.readline().strip()
source = sys.stdin.read()
import builtins, shutil, socket, subprocess
def _blocked(*args, **kwargs):
    raise PermissionError("blocked by the realignkit sandbox")
for _name in ("system", "popen", "remove", "unlink", "rmdir", "removedirs", "rename",
              "renames", "replace", "truncate", "ftruncate", "kill", "killpg", "fork",
              "forkpty", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
              "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle",
              "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "chmod", "fchmod",
              "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "setuid",
              "seteuid", "setgid", "setsid", "setpgid", "putenv", "unsetenv", "symlink", "link",
              "mkfifo", "mknod", "_exit", "abort"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
for _name in ("rmtree", "move", "chown", "copytree", "copy", "copy2", "copyfile"):
    setattr(shutil, _name, _blocked)
for _name in ("Popen", "run", "call", "check_call", "check_output", "getoutput",
              "getstatusoutput"):
    setattr(subprocess, _name, _blocked)
for _name in ("socket", "create_connection", "create_server", "socketpair", "fromfd",
              "getaddrinfo"):
    setattr(socket, _name, _blocked)
import _socket
for _name in ("socket", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_socket, _name, _blocked)
builtins.exit = builtins.quit = _blocked
sys.modules["ctypes"] = None
del _name
namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
try:
    exec(compile(source, "program.py", "exec"), namespace)
except BaseException as err:
    sys.stderr.write(type(err).__name__ + ": " + str(err)[:300] + "\n")
    sys.stderr.flush()
    _exit(1)
_write("\n" + token + "\n")
_flush()
_exit(0)
"""


@dataclass
class RunResult:
    """Outcome of one program: ``passed``, ``failed``, ``timeout``."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def _network_namespace_prefix() -> tuple[str, ...]:
    """``unshare`` arguments that drop the network, when this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for args in ((unshare, "--net"), (unshare, "--map-root-user", "--net")):
        try:
            probe = subprocess.run([*args, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return args
    return ()


def run_program(
    program: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    network_isolation: bool = True,
) -> RunResult:
    """Run ``program`` in a sandboxed child process (see the module docstring)."""
    token = secrets.token_hex(16)
    runner = (
        _RUNNER.replace("@MEMORY_BYTES@", str(memory_mb << 20))
        .replace("@CPU_SECONDS@", str(int(timeout) + 1))
        .replace("@FILE_BYTES@", str(16 << 20))
    )
    prefix = _network_namespace_prefix() if network_isolation else ()
    workdir = tempfile.mkdtemp(prefix="realignkit-sandbox-")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",  # numeric libraries reserve less memory with one thread
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        with (
            open(os.path.join(workdir, ".stdout"), "wb+") as out,
            open(os.path.join(workdir, ".stderr"), "wb+") as err,
        ):
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-c", runner],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
            try:
                proc.communicate((token + "\n" + program).encode("utf-8"), timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunResult("timeout", f"no result after {timeout:g} s")
            finally:
                _kill_group(proc)
            out.seek(0, os.SEEK_END)
            out.seek(max(0, out.tell() - 4096))
            tail = out.read().decode("utf-8", "replace")
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 2048))
            error_tail = err.read().decode("utf-8", "replace").strip()
        if proc.returncode == 0 and tail.rstrip().endswith(token):
            return RunResult("passed")
        last = error_tail.splitlines()[-1] if error_tail else f"exit code {proc.returncode}"
        return RunResult("failed", last[:300])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def chat_prompt(problem_prompt: str) -> str:
    """How a HumanEval problem is asked of a chat model."""
    return (
        "Complete the following Python function. Reply with the whole function in one "
        f"```python code block.\n\n```python\n{problem_prompt}```"
    )


def extract_code(response: str, entry_point: str) -> str:
    """The code of a chat answer: the fenced block that defines the function, else the first."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    for block in blocks:
        if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", block):
            return block
    return blocks[0]


def truncate_body(completion: str) -> str:
    """A plain completion of the function body ends at the first unindented line."""
    lines = completion.split("\n")
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() and not line[0].isspace():
            return "\n".join(lines[:index])
    return completion


def build_program(problem: dict, response: str, *, chat: bool) -> str:
    """Prompt + completion (or the model's full function) + the tests + ``check(entry)``."""
    entry = problem["entry_point"]
    prompt = problem["prompt"]
    if chat:
        code = extract_code(response, entry)
        if re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
            body = prompt + "    pass\n\n" + code  # the model's definition replaces the stub
        else:
            body = prompt + code
    else:
        body = prompt + truncate_body(response)
    return f"{body}\n\n{problem['test']}\n\ncheck({entry})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def run_many(
    programs: list[str], *, timeout: float = 10.0, memory_mb: int = 1024, workers: int | None = None
) -> list[RunResult]:
    """Run programs in parallel sandboxes (threads waiting on child processes)."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    results: list[RunResult | None] = [None] * len(programs)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(programs), desc="humaneval tests", unit="program") as bar,
    ):
        futures = {
            pool.submit(run_program, p, timeout=timeout, memory_mb=memory_mb): i
            for i, p in enumerate(programs)
        }
        for future in futures:
            results[futures[future]] = future.result()
            bar.update(1)
    return [r for r in results if r is not None]
