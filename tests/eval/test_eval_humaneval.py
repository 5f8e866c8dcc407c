"""The HumanEval sandbox: correct code passes; hostile code neither fakes a pass nor escapes.

Each attack from issue 19 is a completion and an expected outcome. Attacks on the grading run
under every isolation level this machine has (the defence is the harness's design); attacks on
the machine run only where the OS-level sandbox works, and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid

import pytest

from realignkit.errors import RealignError
from realignkit.eval import humaneval, sandbox
from realignkit.eval.benchmarks import LoadOptions, load_benchmark
from realignkit.eval.humaneval import Program, build_program, run_many, run_program, truncate_body

WORKS, WHY_NOT = sandbox.probe()
needs_sandbox = pytest.mark.skipif(not WORKS, reason=f"no OS-level sandbox here: {WHY_NOT}")
LEVELS = [humaneval.ISOLATED, humaneval.UNSAFE] if WORKS else [humaneval.UNSAFE]


@pytest.fixture(scope="module")
def problems(shared_data):
    bench = load_benchmark("humaneval", "utility", LoadOptions(data_dir=shared_data))
    return {row["task_id"]: row for row in bench.rows}


@pytest.fixture(scope="module")
def close_elements(problems):
    return problems["HumanEval/0"]  # has_close_elements(numbers, threshold) -> bool


def attack(problem: dict, code: str) -> Program:
    """A chat answer whose code block is ``code`` (top-level statements run first)."""
    return build_program(problem, f"```python\n{code}\n```", chat=True)


def run(program, **kwargs):
    kwargs.setdefault("isolation", humaneval.ISOLATED)
    return run_program(program, **kwargs)


def reported(result, key: str) -> str:
    """What an attack reported about itself through its final exception (``key=value``)."""
    match = re.search(rf"{key}=(\S+)", result.detail)
    assert match, result.detail
    return match.group(1)


# --- correctness -------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_canonical_solutions_pass_and_wrong_ones_fail(problems, level):
    picked = [problems[f"HumanEval/{i}"] for i in (0, 2, 32, 38)]  # 32, 38: tests use helpers
    good = [build_program(p, p["canonical_solution"], chat=False) for p in picked]
    bad = [build_program(p, "    return None\n", chat=False) for p in picked]
    allow = level == humaneval.UNSAFE
    results = run_many(good + bad, timeout=10, workers=2, allow_unsafe=allow)
    assert [r.passed for r in results] == [True] * 4 + [False] * 4
    assert {r.isolation for r in results} == {humaneval.isolation_level(allow)}


def test_chat_answers_with_a_full_function(problems):
    problem = problems["HumanEval/2"]  # truncate_number(number) -> number % 1.0
    answer = (
        "Here is the function:\n\n```python\ndef truncate_number(number: float) -> float:\n"
        "    return number - int(number)\n```\nIt drops the integer part."
    )
    level = LEVELS[0]
    assert run(build_program(problem, answer, chat=True), isolation=level).passed
    body_only = "```python\n    return number % 1.0\n```"
    assert run(build_program(problem, body_only, chat=True), isolation=level).passed


def test_plain_completion_stops_at_the_end_of_the_body():
    completion = "    return x + 1\n\n\ndef other():\n    raise SystemExit\n"
    assert truncate_body(completion) == "    return x + 1\n\n"


def test_without_the_sandbox_humaneval_refuses_unless_told(monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda: (False, "no bubblewrap"))
    with pytest.raises(RealignError, match="--unsafe-code-execution"):
        humaneval.isolation_level()
    with pytest.raises(RealignError, match="no bubblewrap"):
        run_many([Program("pass\n")])
    assert humaneval.isolation_level(allow_unsafe=True) == humaneval.UNSAFE
    assert run_many([Program("pass\n")], allow_unsafe=True)[0].isolation == humaneval.UNSAFE


# --- faking a pass -----------------------------------------------------------------------

FAKE_PASSES = {
    "main-module-token": (
        'import sys; m = sys.modules["__main__"]; m._write("\\n"+m.token+"\\n"); m._flush(); '
        "m._exit(0)"
    ),
    "exit-0": "import os; os._exit(0)",
    "sys-exit-0": "import sys; sys.exit(0)",
    "frame-globals": (
        "import os, sys\n"
        "def has_close_elements(numbers, threshold):\n"
        "    seen = []\n"
        "    frame = sys._getframe(0)\n"
        "    while frame is not None:\n"
        "        for space in (frame.f_globals, frame.f_locals):\n"
        "            seen += [v for v in space.values() if isinstance(v, (str, bytes, int))]\n"
        "        frame = frame.f_back\n"
        "    for fd in range(3, 64):\n"  # every token-looking value, to every descriptor
        "        for value in seen:\n"
        "            try:\n"
        "                os.write(fd, str(value).encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"
    ),
    "always-equal": (
        "class Anything:\n"
        "    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "    def __bool__(self): return True\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return Anything()\n"
    ),
    "always-equal-int": (
        "class Yes(int):\n"
        "    def __eq__(self, other): return True\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return Yes(1)\n"
    ),
    "settrace-swap": (
        "import sys\n"
        "class Anything:\n"
        "    def __eq__(self, other): return True\n"
        "def tracer(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'check':\n"
        "        frame.f_locals['candidate'] = lambda *a, **k: Anything()\n"
        "    return tracer\n"
        "sys.settrace(tracer)\n"
        "sys.setprofile(tracer)\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return None\n"
    ),
    "redefine-check-and-builtins": (
        "import builtins\n"
        "builtins.AssertionError = type('Never', (Exception,), {})\n"
        "builtins.abs = lambda x: 0\n"
        "def check(candidate): pass\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return None\n"
    ),
}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", sorted(FAKE_PASSES))
def test_a_completion_cannot_fake_a_pass(close_elements, name, level):
    result = run(attack(close_elements, FAKE_PASSES[name]), isolation=level)
    assert result.status == "failed", result


@pytest.mark.parametrize("level", LEVELS)
def test_the_tests_are_not_readable_from_the_solution(close_elements, level):
    code = (
        "import gc, sys, os\n"
        "found = []\n"
        "main = sys.modules['__main__']\n"
        "if 'check' in vars(main) or 'METADATA' in vars(main): found.append('main')\n"
        "for obj in gc.get_objects():\n"  # HumanEval/0's test: check() and METADATA
        "    if getattr(obj, '__name__', None) == 'check': found.append('gc-check')\n"
        "    if isinstance(obj, dict) and obj.get('author') == 'jt': found.append('gc-data')\n"
        "for fd in range(0, 64):\n"
        "    try:\n"
        "        os.lseek(fd, 0, 0)\n"
        "        if b'def check' in os.read(fd, 1 << 20): found.append(f'fd{fd}')\n"
        "    except OSError:\n"
        "        pass\n"
        "for path in ('test.py', '/tmp/test.py', '/proc/self/fd/4', '/proc/1/cmdline'):\n"
        "    try:\n"
        "        if 'check' in open(path).read(): found.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "raise SystemExit('found=' + (','.join(found) or 'nothing'))\n"
    )
    result = run(attack(close_elements, code), isolation=level)
    assert reported(result, "found") == "nothing"


# --- escaping: the evaluator, time, the network ------------------------------------------


@needs_sandbox
def test_the_evaluator_cannot_be_killed(close_elements):
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    for code in (
        "import posix, signal; posix.kill(posix.getppid(), signal.SIGTERM)",
        f"import posix, signal; posix.kill({os.getpid()}, signal.SIGKILL)",
        "import posix, signal; posix.kill(-1, signal.SIGKILL)",
    ):
        assert run(attack(close_elements, code)).status == "failed", code
    after = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    assert not {name for name in after - before if "realignkit" in name}  # nothing left behind


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@needs_sandbox
def test_no_process_outlives_the_timeout(close_elements):
    marker = f"outlive-{uuid.uuid4().hex}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-S', '-c', "
        f"'import time\\nwhile True: time.sleep(0.05)', '{marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run(attack(close_elements, code), timeout=1.5)
    assert result.status == "timeout"
    assert _processes_with(marker) == []


@needs_sandbox
def test_the_sandbox_runs_unprivileged(close_elements):
    marker = f"whoami-{uuid.uuid4().hex}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        f"    os.execv(sys.executable, [sys.executable, '-S', '-c', "
        f"'import time; time.sleep(3)', '{marker}'])\n"
        "time.sleep(3)\n"
        "raise SystemExit(f'uid={os.getuid()} euid={os.geteuid()}')\n"
    )
    seen: dict[str, str] = {}

    def look():
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not seen:
            for pid in _processes_with(marker):
                with open(f"/proc/{pid}/status") as handle:
                    fields = dict(line.split(":", 1) for line in handle if ":" in line)
                seen.update({k: v.split() for k, v in fields.items() if k in ("Uid", "CapEff")})
            time.sleep(0.05)

    watcher = threading.Thread(target=look)
    watcher.start()
    result = run(attack(close_elements, code), timeout=6)
    watcher.join()
    assert reported(result, "uid") == "1000"
    assert seen, "the sandboxed process was never seen from the host"
    assert "0" not in seen["Uid"]  # real, effective, saved and fs uid on the host
    assert int(seen["CapEff"][0], 16) == 0


@needs_sandbox
def test_no_network_not_even_through_setns(close_elements):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    code = (
        "import ctypes, os, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "errors = []\n"
        f"for path in ('/proc/1/ns/net', '/proc/{os.getpid()}/ns/net', '/proc/self/ns/net'):\n"
        "    try:\n"
        "        fd = os.open(path, os.O_RDONLY)\n"
        "    except OSError:\n"
        "        fd = 0\n"
        "    ctypes.set_errno(0)\n"
        "    errors.append(str(libc.setns(fd, 0x40000000)) + ':' + str(ctypes.get_errno()))\n"
        "for family, address in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "    try:\n"
        f"        socket.create_connection((address, {port}), timeout=1)\n"
        "        errors.append('connected')\n"
        "    except OSError as err:\n"
        "        errors.append(type(err).__name__)\n"
        "raise SystemExit('outcome=' + ','.join(errors))\n"
    )
    try:
        result = run(attack(close_elements, code))
        setns, connect = reported(result, "outcome").split(",")[:3], reported(result, "outcome")
        assert setns == ["-1:1"] * 3  # EPERM from the seccomp filter, whatever the descriptor
        assert "connected" not in connect
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            server.accept()
    finally:
        server.close()


@needs_sandbox
def test_seccomp_refuses_namespace_and_tracing_calls(close_elements):
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "calls = {\n"
        "    'unshare': lambda: libc.unshare(0x10000000),\n"
        "    'mount': lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "    'ptrace': lambda: libc.ptrace(0, 0, None, None),\n"
        "    'chroot': lambda: libc.chroot(b'/tmp'),\n"
        "}\n"
        "out = []\n"
        "for name, call in calls.items():\n"
        "    ctypes.set_errno(0)\n"
        "    out.append(f'{name}:{call()}:{ctypes.get_errno()}')\n"
        "raise SystemExit('calls=' + ','.join(out))\n"
    )
    calls = reported(run(attack(close_elements, code)), "calls").split(",")
    assert calls == ["unshare:-1:1", "mount:-1:1", "ptrace:-1:1", "chroot:-1:1"]


# --- escaping: files and processes -------------------------------------------------------


@needs_sandbox
def test_files_outside_the_temp_folder_are_out_of_reach(close_elements, tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    created = tmp_path / "created.txt"
    project = os.path.abspath(__file__)
    code = (
        "import os, posix, shutil\n"
        "done = []\n"
        f"victim, created, project = {str(victim)!r}, {str(created)!r}, {project!r}\n"
        "attempts = {\n"
        "    'unlink': lambda: posix.unlink(victim),\n"
        "    'rmtree': lambda: shutil.rmtree(os.path.dirname(victim)),\n"
        "    'overwrite': lambda: open(victim, 'w').write('gone'),\n"
        "    'create': lambda: open(created, 'w').write('new'),\n"
        "    'root': lambda: open('/evil', 'w').write('x'),\n"
        "    'usr': lambda: open('/usr/evil', 'w').write('x'),\n"
        "    'interpreter': lambda: open(os.__file__, 'a').write('x'),\n"
        "    'passwd': lambda: done.append(open('/etc/passwd').read()),\n"
        "    'project': lambda: done.append(open(project).read()),\n"
        "}\n"
        "for name, call in attempts.items():\n"
        "    try:\n"
        "        call()\n"
        "        done.append(name)\n"
        "    except OSError:\n"
        "        pass\n"
        "raise SystemExit('done=' + (repr(done).replace(' ', '') if done else 'nothing'))\n"
    )
    result = run(attack(close_elements, code))
    assert reported(result, "done") == "nothing"
    assert victim.read_text() == "precious" and not created.exists()
    assert "root:" not in result.detail and "def test_" not in result.detail


@needs_sandbox
def test_spawned_processes_are_sandboxed_too(close_elements, tmp_path):
    marker = tmp_path / "spawned"
    code = (
        "import importlib, os, posix, sys\n"
        f"posix.system('touch {marker}; echo x > {marker}')\n"
        f"os.posix_spawn('/bin/sh', ['sh', '-c', 'touch {marker}'], {{}})\n"
        "importlib.reload(os)\n"
        f"os.system('touch {marker}')\n"
        "import subprocess\n"
        f"subprocess.run(['touch', '{marker}'])\n"
        "raise SystemExit('spawned=yes')\n"
    )
    result = run(attack(close_elements, code))
    assert reported(result, "spawned") == "yes"  # they ran, inside the sandbox
    assert not marker.exists()


# --- limits, for the sandbox in total ----------------------------------------------------


@needs_sandbox
def test_a_fork_bomb_is_bounded(close_elements):
    code = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "raise SystemExit(f'forked={forked}')\n"
    )
    result = run(attack(close_elements, code), processes=8)
    assert 0 < int(reported(result, "forked")) <= 8
    # The count is per sandbox, not per uid: three bombs at once each get their own share.
    results = run_many([attack(close_elements, code)] * 3, workers=3)
    assert all(0 < int(reported(r, "forked")) <= 8 for r in results)


@needs_sandbox
def test_memory_is_limited_across_children(close_elements):
    code = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        held, blocks = 0, []\n"
        "        try:\n"
        "            while held < 800:\n"
        "                blocks.append(bytearray(16 << 20))\n"
        "                held += 16\n"
        "        except MemoryError:\n"
        "            pass\n"
        "        os.write(w, f'{held}\\n'.encode())\n"
        "        time.sleep(2)\n"  # all three hold their memory at once
        "        os._exit(0)\n"
        "os.close(w)\n"
        "total = sum(int(x) for x in os.fdopen(r).read().split())\n"
        "raise SystemExit(f'total_mb={total}')\n"
    )
    result = run(attack(close_elements, code), memory_mb=512, processes=8)
    assert 0 < int(reported(result, "total_mb")) <= 512  # not 3 x 800 MB


@needs_sandbox
def test_bytes_written_are_limited_in_total(close_elements):
    code = (
        "written = 0\n"
        "for index in range(3):\n"
        "    try:\n"
        "        with open(f'/tmp/file{index}', 'wb') as handle:\n"
        "            for _ in range(10):\n"
        "                handle.write(b'x' * (1 << 20))\n"
        "                handle.flush()\n"
        "                written += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "raise SystemExit(f'written_mb={written}')\n"
    )
    result = run(attack(close_elements, code), disk_mb=16)
    assert 0 < int(reported(result, "written_mb")) <= 16  # not 3 x 10 MB


@pytest.mark.parametrize("level", LEVELS)
def test_runaway_programs_are_stopped(level):
    assert run(Program("while True:\n    pass\n"), timeout=1.0, isolation=level).status == (
        "timeout"
    )
    result = run(Program("block = bytearray(64 * 1024 ** 3)\n"), memory_mb=512, isolation=level)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_evaluate_records_the_isolation_and_refuses_without_it(shared_data, tmp_path, monkeypatch):
    from tiny import save_tiny_model

    from realignkit.eval import evaluate

    model = save_tiny_model("llama", tmp_path / "model")
    options = dict(utility="humaneval", limit=2, max_new_tokens=4, data_dir=shared_data)
    if WORKS:
        summary = evaluate(model, out_dir=tmp_path / "safe", device="cpu", **options)
        assert summary["metrics"]["humaneval"]["isolation"] == humaneval.ISOLATED
    monkeypatch.setattr(sandbox, "probe", lambda: (False, "no bubblewrap"))
    with pytest.raises(RealignError, match="--unsafe-code-execution"):
        evaluate(model, out_dir=tmp_path / "refused", device="cpu", **options)
    assert not (tmp_path / "refused").exists()  # refused before generating anything
    from realignkit.cli import main

    command = ["eval", "--model", str(model), "--utility", "humaneval", "--limit", "2"]
    command += ["--max-new-tokens", "4", "--data-dir", str(shared_data), "--device", "cpu"]
    with pytest.raises(SystemExit) as stopped:
        main([*command, "-o", str(tmp_path / "refused-cli")])
    assert stopped.value.code == 2
    main([*command, "-o", str(tmp_path / "unsafe"), "--unsafe-code-execution"])
    summary = json.loads((tmp_path / "unsafe" / "summary.json").read_text())
    assert summary["metrics"]["humaneval"]["isolation"] == humaneval.UNSAFE
    assert "| isolation | none |" in (tmp_path / "unsafe" / "summary.md").read_text()


@pytest.mark.parametrize("level", LEVELS)
def test_the_solution_can_import_the_interpreters_packages(level):
    code = "import numpy\nraise SystemExit('numpy=' + numpy.__version__)\n"
    assert reported(run(Program(code), isolation=level), "numpy") != ""
