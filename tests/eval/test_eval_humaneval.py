"""The HumanEval sandbox: correct code passes, hostile or runaway code fails and harms nothing."""

from __future__ import annotations

import os
import socket

import pytest

from realignkit.eval.benchmarks import LoadOptions, load_benchmark
from realignkit.eval.humaneval import build_program, run_many, run_program, truncate_body


@pytest.fixture(scope="module")
def problems(shared_data):
    bench = load_benchmark("humaneval", "utility", LoadOptions(data_dir=shared_data))
    return {row["task_id"]: row for row in bench.rows}


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    picked = [problems[f"HumanEval/{i}"] for i in (0, 2, 7)]
    good = [build_program(p, p["canonical_solution"], chat=False) for p in picked]
    bad = [build_program(p, "    return None\n", chat=False) for p in picked]
    results = run_many(good + bad, timeout=10, workers=2)
    assert [r.passed for r in results] == [True] * 3 + [False] * 3


def test_chat_answers_with_a_full_function(problems):
    problem = problems["HumanEval/2"]  # truncate_number(number) -> number % 1.0
    answer = (
        "Here is the function:\n\n```python\ndef truncate_number(number: float) -> float:\n"
        "    return number - int(number)\n```\nIt drops the integer part."
    )
    assert run_program(build_program(problem, answer, chat=True)).passed
    body_only = "```python\n    return number % 1.0\n```"
    assert run_program(build_program(problem, body_only, chat=True)).passed


def test_plain_completion_stops_at_the_end_of_the_body():
    completion = "    return x + 1\n\n\ndef other():\n    raise SystemExit\n"
    assert truncate_body(completion) == "    return x + 1\n\n"


def test_infinite_loop_times_out():
    result = run_program("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout"


def test_huge_allocation_fails_without_hurting_the_parent():
    result = run_program("block = bytearray(64 * 1024 ** 3)\n", memory_mb=512)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_os_system_and_subprocess_are_blocked(tmp_path):
    marker = tmp_path / "created-by-sandbox"
    for code in (
        f"import os\nos.system('touch {marker}')\n",
        f"import subprocess\nsubprocess.run(['touch', '{marker}'])\n",
        f"import os\nos.popen('touch {marker}')\n",
    ):
        result = run_program(code)
        assert result.status == "failed" and "PermissionError" in result.detail
    assert not marker.exists()


def test_file_deletion_outside_and_inside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inner.txt").write_text("also precious")
    for code in (
        f"import os\nos.remove({str(victim)!r})\n",
        f"import pathlib\npathlib.Path({str(victim)!r}).unlink()\n",
        f"import shutil\nshutil.rmtree({str(folder)!r})\n",
        f"import os\nos.rename({str(victim)!r}, {str(victim) + '.moved'!r})\n",
    ):
        assert not run_program(code).passed
    assert victim.read_text() == "precious" and (folder / "inner.txt").exists()


@pytest.mark.parametrize("namespace", [True, False], ids=["netns", "guard-only"])
def test_no_network_to_a_local_server(namespace):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        for code in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
            f"import _socket\ns = _socket.socket()\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\n",
        ):
            assert not run_program(code, network_isolation=namespace).passed
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            server.accept()
    finally:
        server.close()


def test_exit_codes_cannot_fake_a_pass():
    for code in (
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "exit(0)\n",
        "raise SystemExit(0)\n",
    ):
        assert not run_program(code).passed, code


def test_the_parent_cannot_be_signalled():
    result = run_program(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert not result.passed  # and this test process is still alive to assert it
