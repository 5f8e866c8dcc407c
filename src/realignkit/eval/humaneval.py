"""HumanEval: assemble programs from completions and grade them in an OS-level sandbox.

A program is graded by two processes inside one sandbox (:mod:`realignkit.eval.sandbox`):

* the *solution* process runs the prompt and the completion, and then only answers calls:
  it receives pickled arguments, calls the entry point, sends back the pickled result;
* the *test* process (its parent, forked before either reads anything) runs the dataset's
  own test code with ``candidate`` standing for a proxy that makes those calls. Results are
  unpickled by an unpickler that builds only plain data (numbers, strings, bytes, lists,
  tuples, dicts, sets), so every comparison runs on values the test process made itself.

The test code, the expected values and the means of reporting exist only in the test
process. The solution process never holds them: it forks first, closes the test and report
descriptors, and cannot reach its parent's memory or descriptors (no ``/proc``; seccomp
refuses ``ptrace``, ``process_vm_readv`` and ``pidfd_getfd``). A pass is the test process
writing, after ``check`` returned, a per-run secret that the evaluator compares; any other
ending (the solution crashing, exiting, killing its parent, hanging) is a failure.

Without the sandbox (``allow_unsafe=True``, the CLI's ``--unsafe-code-execution``) the same
two processes run as plain children of the evaluator with rlimits only: a completion can
then read and write the user's files, use the network and outlive the run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

from realignkit.errors import RealignError
from realignkit.eval import sandbox

ISOLATED = "bubblewrap"  # namespaces + seccomp + per-sandbox limits
UNSAFE = "none"  # --unsafe-code-execution: rlimits only

# The harness, run as ``python -I -S -c HARNESS CODE_FD TEST_FD REPORT_FD ENTRY``. Trusted code.
_HARNESS = r"""
import builtins, os, pickle, sys
@LIMITS@
_CAP = 16 << 20

def _send(fd, data):
    data = len(data).to_bytes(4, "little") + data
    while data:
        data = data[os.write(fd, data):]

def _read(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)

def _recv(fd):
    size = int.from_bytes(_read(fd, 4), "little")
    if size > _CAP:
        raise ValueError("reply too large")
    return _read(fd, size)

def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)

def _solve(code_fd, requests, replies, entry):
    # The solution process: it has no test, secret or report descriptor.
    source = _read_all(code_fd).decode("utf-8")
    sys.path += @SITE_PACKAGES@  # third-party packages, importable but not run at start-up
    import types
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        exec(compile(source, "solution.py", "exec"), main.__dict__)
    except BaseException as err:
        sys.stderr.write("solution: " + type(err).__name__ + ": " + str(err)[:300] + "\n")
        sys.stderr.flush()
        os._exit(1)
    if not entry:
        os._exit(0)
    function = main.__dict__.get(entry)
    while True:
        try:
            args, kwargs = pickle.loads(_recv(requests))
        except EOFError:
            os._exit(0)
        try:
            reply = ("ok", function(*args, **kwargs))
        except BaseException as err:
            reply = ("raise", type(err).__name__, str(err)[:300])
        try:
            data = pickle.dumps(reply, protocol=4)
        except BaseException:
            data = pickle.dumps(("raise", "TypeError", "the result is not plain data"))
        _send(replies, data)

class _PlainData(pickle.Unpickler):
    _allowed = {"complex", "set", "frozenset", "bytearray", "range", "slice"}

    def find_class(self, module, name):
        if module == "builtins" and name in self._allowed:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

def _test(pid, test_fd, report_fd, requests, replies, entry):
    import io
    payload = _read_all(test_fd)
    secret, test = payload.split(b"\n", 1)
    if not entry:  # a plain script: it passes by running to its end
        _, status = os.waitpid(pid, 0)
        if status == 0:
            os.write(report_fd, secret)
        os._exit(0)
    calls = [0]
    # The solution's children may hold the reply pipe open: its end is watched separately.
    import select
    watch = select.poll()
    watch.register(replies, select.POLLIN)
    watch.register(os.pidfd_open(pid), select.POLLIN)

    def candidate(*args, **kwargs):
        calls[0] += 1
        _send(requests, pickle.dumps((args, kwargs), protocol=4))
        try:
            events = dict(watch.poll())
            if not events.get(replies, 0) & select.POLLIN:
                raise EOFError
            reply = _PlainData(io.BytesIO(_recv(replies))).load()
        except EOFError:
            raise RuntimeError("the solution process ended") from None
        if reply[0] == "ok":
            return reply[1]
        kind = getattr(builtins, reply[1], None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(reply[2])
        raise RuntimeError(reply[1] + ": " + reply[2])

    namespace = {"__name__": "__test__", "__builtins__": builtins, "candidate": candidate}
    try:
        exec(compile(test.decode("utf-8"), "test.py", "exec"), namespace)
    except BaseException as err:
        sys.stderr.write("test: " + type(err).__name__ + ": " + str(err)[:300] + "\n")
        sys.stderr.flush()
        os._exit(1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    if calls[0]:
        os.write(report_fd, secret)
    os._exit(0)

def _main():
    code_fd, test_fd, report_fd = (int(a) for a in sys.argv[1:4])
    entry = sys.argv[4]
    requests = os.pipe()
    replies = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (test_fd, report_fd, requests[1], replies[0]):
            os.close(fd)
        _solve(code_fd, requests[0], replies[1], entry)
    for fd in (code_fd, requests[0], replies[1]):
        os.close(fd)
    _test(pid, test_fd, report_fd, requests[1], replies[0], entry)

_main()
"""


@dataclass(frozen=True)
class Program:
    """What one graded run executes: ``solution`` (prompt + completion), then ``test``.

    ``test`` is trusted dataset code that ends by calling ``check(candidate)``; ``entry_point``
    names the function of the solution that ``candidate`` calls. ``entry_point=""`` runs
    ``solution`` as a plain script, which passes by running to its end (that is not grading:
    a script can end itself with exit status 0).
    """

    solution: str
    test: str = ""
    entry_point: str = ""


@dataclass
class RunResult:
    """Outcome of one program: ``passed``, ``failed``, ``timeout``; ``isolation`` it ran under."""

    status: str
    detail: str = ""
    isolation: str = ISOLATED

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def isolation_level(allow_unsafe: bool = False) -> str:
    """``"bubblewrap"`` where the sandbox works; else ``"none"`` if allowed; else an error."""
    works, reason = sandbox.probe()
    if works:
        return ISOLATED
    if allow_unsafe:
        return UNSAFE
    raise RealignError(
        f"HumanEval runs model-written code and the sandbox is unavailable ({reason}); "
        "install bubblewrap, or pass --unsafe-code-execution to run it unisolated"
    )


def run_program(
    program: Program | str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    processes: int = 8,
    disk_mb: int = 16,
    isolation: str | None = None,
) -> RunResult:
    """Run one program and grade it (see the module docstring).

    ``isolation`` is ``"bubblewrap"`` or ``"none"``; by default the sandbox, or an error
    where it is unavailable. ``memory_mb``, ``processes`` and ``disk_mb`` bound the whole
    run (every process of it together).
    """
    if isinstance(program, str):
        program = Program(program)
    level = isolation or isolation_level()
    isolated = level == ISOLATED
    limits = sandbox.Limits(memory_mb, processes, int(timeout) + 1, disk_mb)
    harness = _HARNESS.replace("@LIMITS@", sandbox.limit_commands(limits, isolated=isolated))
    harness = harness.replace("@SITE_PACKAGES@", repr(_site_packages()))
    secret = secrets.token_hex(16).encode()
    code_fd = _memfd(program.solution.encode("utf-8"))
    test_fd = _memfd(secret + b"\n" + program.test.encode("utf-8"))
    report_r, report_w = os.pipe()
    fds = [code_fd, test_fd, report_w]
    argv = [sys.executable, "-I", "-S", "-c", harness, str(code_fd), str(test_fd)]
    argv += [str(report_w), program.entry_point]
    workdir = None
    info_r = None
    try:
        if isolated:
            seccomp_fd = _memfd(sandbox.seccomp_program())
            info_r, info_w = os.pipe()
            fds += [seccomp_fd, info_w]
            command = sandbox.wrap(argv, disk_mb=disk_mb, seccomp_fd=seccomp_fd, info_fd=info_w)
            cwd, env = "/", {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        else:
            workdir = tempfile.mkdtemp(prefix="realignkit-unsafe-")
            command, cwd, env = argv, workdir, _unsafe_env(workdir)
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                pass_fds=fds,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
            for fd in fds:
                os.close(fd)
            fds = []
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)
            if info_r is not None:
                _wait_sandbox_gone(info_r)
            report = _read_available(report_r)
            errors.seek(0, os.SEEK_END)
            errors.seek(max(0, errors.tell() - 2048))
            error_tail = errors.read().decode("utf-8", "replace").strip()
        if timed_out:
            return RunResult("timeout", f"no result after {timeout:g} s", level)
        if proc.returncode == 0 and secrets.compare_digest(report, secret):
            return RunResult("passed", "", level)
        return RunResult("failed", _failure_detail(error_tail, proc.returncode), level)
    finally:
        for fd in (*fds, report_r, *([info_r] if info_r is not None else [])):
            os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


@lru_cache(maxsize=1)
def _site_packages() -> list[str]:
    """The evaluator's site-packages folders (``-S`` skips site's slow ``.pth`` processing)."""
    folders = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return sorted(folder for folder in folders if os.path.isdir(folder))


def _failure_detail(stderr_tail: str, returncode: int) -> str:
    """The solution's own error when it had one (the root cause), else the test's."""
    lines = stderr_tail.splitlines()
    own = [line for line in lines if line.startswith("solution: ")]
    chosen = own[-1] if own else lines[-1] if lines else f"exit code {returncode}"
    return chosen[:300]


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("realignkit", 0)  # inheritable, unlike the default MFD_CLOEXEC
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _unsafe_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _wait_sandbox_gone(info_fd: int, limit: float = 5.0) -> None:
    """Return once the sandbox's init (and so every process in its PID namespace) is gone."""
    try:
        child = json.loads(_read_available(info_fd) or b"{}").get("child-pid")
    except ValueError:
        child = None
    if not child:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if state in (b"Z", b"X"):  # a namespace's init is a zombie only after the rest died
            return
        time.sleep(0.005)


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


def build_program(problem: dict, response: str, *, chat: bool) -> Program:
    """Prompt + completion (or the model's full function) as the solution; the tests apart."""
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
    # The test process runs the prompt too (some tests call its helper functions), and the
    # entry point's name means the solution's function there as well (HumanEval/33's test
    # compares candidate with sort_third).
    test = f"{prompt}    pass\n\n{entry} = candidate\n\n{problem['test']}\n\ncheck(candidate)\n"
    return Program(solution=body, test=test, entry_point=entry)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def run_many(
    programs: list[Program | str],
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    allow_unsafe: bool = False,
) -> list[RunResult]:
    """Run programs in parallel sandboxes (threads waiting on child processes).

    Raises :class:`RealignError` where the sandbox is unavailable, unless ``allow_unsafe``.
    """
    level = isolation_level(allow_unsafe)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    results: list[RunResult | None] = [None] * len(programs)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(programs), desc=f"humaneval tests ({level})", unit="program") as bar,
    ):
        futures = {
            pool.submit(run_program, p, timeout=timeout, memory_mb=memory_mb, isolation=level): i
            for i, p in enumerate(programs)
        }
        for future in futures:
            results[futures[future]] = future.result()
            bar.update(1)
    return [r for r in results if r is not None]
