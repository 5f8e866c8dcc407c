"""The streaming pipeline (:mod:`realignkit.checkpoint.stream`): while one tensor is computed
the next one's inputs are read in a reader thread and the previous result is written in a
writer thread. Specification:

* the outputs are the same bits with the overlap on and off (``REALIGNKIT_OVERLAP=0``), and
  on means the reads and the writes really run in those threads;
* an exception in the reader or the writer thread reaches the caller as the same exception
  (the CLI's same one-line error) and leaves no output folder and no temporary;
* the queues between the stages never hold more than their depth, so memory holds a few
  tensors whatever the model size.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import assert_one_line_error, load_folder_tensors, run_cli  # noqa: E402
from tiny import build_tiny_model, perturbed_copy, save_tiny_model  # noqa: E402

from realignkit.checkpoint import CheckpointReader, CheckpointWriter, direct  # noqa: E402
from realignkit.checkpoint.stream import (  # noqa: E402
    Aborted,
    BoundedQueue,
    WriteBehind,
    read_ahead,
)
from realignkit.errors import RealignError  # noqa: E402

READER, WRITER = "realignkit-read-ahead", "realignkit-writer"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bf16 aligned A, unaligned U and fine-tuned F (perturbed copies of A): RESTA's fused
    bf16 kernel and DARE's widened pieces both run."""
    root = tmp_path_factory.mktemp("overlap")
    aligned = build_tiny_model("llama", seed=1)
    models = {"A": aligned}
    models |= {"U": perturbed_copy(aligned, seed=2), "F": perturbed_copy(aligned, seed=3)}
    return {
        key: save_tiny_model("llama", root / key, model=model, dtype=torch.bfloat16)
        for key, model in models.items()
    }


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _outputs(world: dict[str, Path], root: Path, workers: int) -> dict[str, dict]:
    """safety-vector, RESTA and RESTA+DARE, each output's tensors."""
    sv = root / "sv"
    commands = {
        "sv": ["safety-vector", "--aligned", world["A"], "--unaligned", world["U"], "-o", sv],
        "resta": ["resta", "--finetuned", world["F"], "--safety-vector", sv, "--include", "all"],
        "dare": ["resta", "--finetuned", world["F"], "--safety-vector", sv, "--include", "all"]
        + ["--dare", "0.3", "--base", world["A"]],
    }
    found = {}
    for step, argv in commands.items():
        out = sv if step == "sv" else root / step
        if step != "sv":
            argv = [*argv, "-o", out]
        assert run_cli([*argv, "--workers", str(workers)]) == 0
        found[step] = load_folder_tensors(out)
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_outputs_are_the_same_bits_with_and_without_overlap(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 0)  # the direct path too, on tiny tensors
    threads: dict[str, set[str]] = {"read": set(), "write": set()}
    get, add = CheckpointReader.get, CheckpointWriter.add

    def watched_get(self: CheckpointReader, name: str, **kwargs: object) -> torch.Tensor:
        threads["read"].add(threading.current_thread().name)
        return get(self, name, **kwargs)  # type: ignore[arg-type]

    def watched_add(self: CheckpointWriter, name: str, tensor: torch.Tensor) -> None:
        threads["write"].add(threading.current_thread().name)
        add(self, name, tensor)

    monkeypatch.setattr(CheckpointReader, "get", watched_get)
    monkeypatch.setattr(CheckpointWriter, "add", watched_add)
    results = {}
    for overlap in ("1", "0"):
        monkeypatch.setenv("REALIGNKIT_OVERLAP", overlap)
        threads["read"].clear()
        threads["write"].clear()
        results[overlap] = _outputs(world, tmp_path / f"overlap-{overlap}", workers)
        if overlap == "1":
            assert threads == {"read": {READER}, "write": {WRITER}}
        elif workers == 1:
            assert threads == {"read": {"MainThread"}, "write": {"MainThread"}}
        else:  # the pool's workers read, the caller writes
            assert threads["write"] == {"MainThread"} and READER not in threads["read"]
    for step in ("sv", "resta", "dare"):
        on, off = results["1"][step], results["0"][step]
        assert sorted(on) == sorted(off), step
        for name, tensor in on.items():
            assert tensor.dtype == off[name].dtype, (step, name)
            assert torch.equal(tensor.view(torch.uint8), off[name].view(torch.uint8)), (step, name)


VICTIM = "model.layers.1.mlp.down_proj.weight"


def _failing_read(raised_in: list[str]):  # noqa: ANN202
    """CheckpointReader.get failing on one tensor as a truncated file does."""
    get = CheckpointReader.get

    def failing_get(self: CheckpointReader, name: str, **kwargs: object) -> torch.Tensor:
        if name == VICTIM:
            raised_in.append(threading.current_thread().name)
            raise RealignError(f"{self.dir} is truncated while reading tensor {name!r}")
        return get(self, name, **kwargs)  # type: ignore[arg-type]

    return failing_get


def _failing_write(raised_in: list[str]):  # noqa: ANN202
    """CheckpointWriter.add failing on the fifth tensor as a full disk does."""
    add, calls = CheckpointWriter.add, []

    def full_disk_add(self: CheckpointWriter, name: str, tensor: torch.Tensor) -> None:
        calls.append(name)
        if len(calls) >= 5:  # once: the writer thread must stop at its error
            raised_in.append(threading.current_thread().name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        add(self, name, tensor)

    return full_disk_add


@pytest.mark.parametrize(
    ("thread", "patched", "failing", "fragments"),
    [
        (READER, "get", _failing_read, ["truncated while reading tensor", VICTIM]),
        (WRITER, "add", _failing_write, ["no space left on the device"]),
    ],
    ids=["reader", "writer"],
)
def test_an_error_in_a_pipeline_thread_reaches_the_caller_and_leaves_no_output(
    world: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    thread: str,
    patched: str,
    failing,  # noqa: ANN001
    fragments: list[str],
) -> None:
    sv, out = tmp_path / "sv", tmp_path / "out"
    argv = ["safety-vector", "--aligned", world["A"], "--unaligned", world["U"], "-o", sv]
    assert run_cli(argv) == 0
    raised_in: list[str] = []
    owner = CheckpointReader if patched == "get" else CheckpointWriter
    monkeypatch.setattr(owner, patched, failing(raised_in))
    capsys.readouterr()
    code = run_cli(["resta", "--finetuned", world["F"], "--safety-vector", sv, "-o", out])
    assert_one_line_error(capsys, code, *fragments)
    assert raised_in == [thread]
    assert not out.exists() and not _temporaries(out)
    assert not any(t.name in (READER, WRITER) for t in threading.enumerate())


def _tensors(count: int) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.full((64,), float(i)) for i in range(count)}


def test_any_writer_thread_exception_is_raised_in_the_caller_as_itself(tmp_path: Path) -> None:
    tensors = _tensors(6)
    out = tmp_path / "out"
    boom = RuntimeError("shard writer failed")
    add = CheckpointWriter.add

    def produce(name: str) -> tuple[dict[str, torch.Tensor], None]:
        return {name: tensors[name]}, None

    class Failing(CheckpointWriter):
        def add(self, name: str, tensor: torch.Tensor) -> None:
            if name == "t3":
                raise boom
            add(self, name, tensor)

    with pytest.raises(RuntimeError) as caught, Failing(out) as writer:
        for _ in writer.stream(produce, list(tensors), overlap=True):
            pass
    assert caught.value is boom
    assert not out.exists() and not _temporaries(out)


def test_an_interrupted_stream_stops_its_threads_and_leaves_no_output(tmp_path: Path) -> None:
    """Ctrl-C lands in the caller's thread, between two tensors, while the reader and the
    writer threads are busy: both are stopped before the temporary folder is deleted."""
    tensors = _tensors(40)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), CheckpointWriter(out) as writer:
        stream = writer.stream(
            lambda named: (dict([named]), None),
            list(tensors),
            load=lambda n: (n, tensors[n].clone()),
            overlap=True,
        )
        for index, _ in enumerate(stream):
            if index == 10:
                raise KeyboardInterrupt
    assert not out.exists() and not _temporaries(out)
    assert not any(t.name in (READER, WRITER) for t in threading.enumerate())


def test_an_uninterrupted_stream_writes_everything_before_the_loop_ends(tmp_path: Path) -> None:
    tensors = _tensors(25)
    out = tmp_path / "out"
    with CheckpointWriter(out, max_shard_size=1000) as writer:
        for _ in writer.stream(
            lambda named: (dict([named]), None),
            list(tensors),
            load=lambda n: (n, tensors[n].clone()),
            workers=2,
            overlap=True,
        ):
            pass
        assert writer.total_bytes == sum(t.numel() * 4 for t in tensors.values())
    written = load_folder_tensors(out)
    assert sorted(written) == sorted(tensors)
    assert all(torch.equal(written[n], t) for n, t in tensors.items())


# --- the bounded queues ------------------------------------------------------------------------


def _wait_for(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_bounded_queue_never_holds_more_than_its_depth() -> None:
    queue: BoundedQueue[int] = BoundedQueue(2)
    producer = threading.Thread(target=lambda: [queue.put(i) for i in range(50)] and queue.close())
    producer.start()
    _wait_for(lambda: len(queue) == 2, "the producer never filled the queue")
    got = []
    for item in queue:
        assert len(queue) <= 2
        got.append(item)
    producer.join()
    assert got == list(range(50))
    assert queue.high_water == 2
    with pytest.raises(ValueError):
        BoundedQueue(0)


def test_a_producer_error_arrives_after_the_items_put_before_it() -> None:
    queue: BoundedQueue[int] = BoundedQueue(3)
    failure = RealignError("tensor 'x' in model contains NaN")
    queue.put(0)
    queue.put(1)
    queue.close(failure)
    got = []
    with pytest.raises(RealignError) as caught:
        for item in queue:
            got.append(item)
    assert got == [0, 1] and caught.value is failure


def test_an_abort_releases_a_producer_waiting_on_a_full_queue() -> None:
    queue: BoundedQueue[int] = BoundedQueue(1)
    queue.put(0)
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            queue.put(1)  # full: waits until the consumer aborts
        except BaseException as err:
            outcome.append(err)

    producer = threading.Thread(target=produce)
    producer.start()
    failure = OSError(errno.EIO, "I/O error")
    queue.abort(failure)
    producer.join(timeout=10)
    assert not producer.is_alive() and outcome == [failure]
    stopped: BoundedQueue[int] = BoundedQueue(1)
    stopped.abort()  # the consumer stopped without an error of its own
    with pytest.raises(Aborted):
        stopped.put(0)


def test_read_ahead_loads_at_most_its_depth_plus_one_ahead_of_the_consumer() -> None:
    depth, started = 2, []

    def load(name: str) -> str:
        started.append(name)
        return name.upper()

    names = [f"n{i}" for i in range(30)]
    got = []
    for index, (name, value) in enumerate(read_ahead(load, names, depth)):
        if index == 0:
            # The reader fills the queue and starts one more load, then waits for room.
            _wait_for(lambda: len(started) >= depth + 2, "the reader did not read ahead")
            time.sleep(0.05)
        assert len(started) <= index + 1 + depth + 1
        got.append((name, value))
    assert got == [(n, n.upper()) for n in names]


def test_closing_read_ahead_early_stops_its_thread() -> None:
    stream = read_ahead(lambda n: n, [f"n{i}" for i in range(100)], 2)
    assert next(stream) == ("n0", "n0")
    stream.close()
    assert not any(t.name == READER for t in threading.enumerate())


def test_write_behind_holds_at_most_its_depth_and_writes_in_order() -> None:
    depth, written, gate = 2, [], threading.Event()

    def write(item: int) -> None:
        gate.wait()
        written.append(item)

    behind: WriteBehind[int] = WriteBehind(write, depth)
    handed = []

    def produce() -> None:
        for i in range(10):
            behind.put(i)
            handed.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    # one item in the writer's hand, ``depth`` queued: the next put waits for room
    _wait_for(lambda: len(handed) == depth + 1, "the writer thread did not take its item")
    time.sleep(0.05)
    assert len(handed) == depth + 1 and len(behind.queue) == depth
    gate.set()
    producer.join()
    behind.finish()
    assert written == list(range(10))
    assert behind.queue.high_water <= depth
