"""trainer.num_threads: auto fits the cores that other work leaves free; N forces N; anything else is refused
in one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from cnn_cli import cpu_use, runtime, schema, train
from cnn_cli.errors import UserError
from helpers import compose, tiny, train_here



@pytest.fixture
def threads_kept(monkeypatch):
    """The test may change torch's thread count and OMP_NUM_THREADS; both come back after it."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


AUTO = re.compile(r"(\d+) thread\(s\) \(trainer\.num_threads=auto: (\d+) cores, (?:(?P<busy>[\d.]+) of them busy "
                  r"with other work over the last (?P<seconds>[\d.]+) s|load average (?P<load>[\d.]+)); "
                  r"trainer\.num_threads=N forces N\)")


def chosen(said: str, torch_threads: int | None = None) -> dict:
    """What set_threads("auto") said it measured and chose, checked against the rule and
    against torch's thread count (this process's, or the one given)."""
    match = AUTO.fullmatch(said)
    assert match, said
    threads, cores = int(match[1]), int(match[2])
    assert cores == runtime.usable_cores() and threads == (torch_threads or torch.get_num_threads())
    assert threads == runtime.auto_threads(cores, float(match["busy"] or match["load"]))  # the figure shown is used
    return {"threads": threads, "cores": cores, "busy": match["busy"] and float(match["busy"]),
            "seconds": match["seconds"] and float(match["seconds"]), "load": match["load"]}


@pytest.mark.parametrize("cores, busy, processes, expected", [
    (2, 0.0, 1, 2),   # idle: every core
    (2, 0.2, 1, 2),   # an idle machine's background work takes no core
    (2, 0.3, 1, 1),   # a core busy a third of the time is taken: a thread there would stall every barrier
    (2, 1.2, 1, 1),   # one core busy: the other one
    (2, 3.0, 1, 1),   # no free core: one thread, never zero
    (16, 4.4, 1, 11),
    (16, 0.0, 4, 4),  # four processes share the cores
    (16, 2.0, 4, 3),
    (1, 0.0, 1, 1),
])
def test_auto_takes_the_cores_other_work_leaves_free(cores: int, busy: float, processes: int, expected: int) -> None:
    assert runtime.auto_threads(cores, busy, processes) == expected


def test_auto_is_the_default_and_sets_and_names_its_choice(threads_kept) -> None:
    assert compose("train", "dataset=mnist_sample").trainer.num_threads == "auto"
    chosen(runtime.set_threads("auto"))


@pytest.mark.e2e
def test_auto_sees_a_process_that_keeps_a_core_busy(threads_kept) -> None:
    busy_loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cpu_use.SINCE_START.restart()
        time.sleep(1.0)
        said = chosen(runtime.set_threads("auto"))
    finally:
        busy_loop.kill()
        busy_loop.wait()
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here: auto uses the load average")
    assert said["busy"] >= 0.6 and said["seconds"] >= 1.0  # at least the loop; other load may add to it
    assert said["threads"] < said["cores"] or said["cores"] == 1


@pytest.mark.parametrize("stat", [None, "", "intr 12 34\n", "cpu 1 2 x\n"], ids=["missing", "empty", "other", "bad"])
def test_no_readable_proc_stat_means_no_measurement(monkeypatch, tmp_path, stat: str | None) -> None:
    path = tmp_path / "stat"
    if stat is not None:
        path.write_text(stat)
    monkeypatch.setattr(cpu_use, "PROC_STAT", str(path))
    assert cpu_use.read_clock() is None


def test_auto_uses_the_load_average_where_there_is_no_proc_stat(threads_kept, monkeypatch, tmp_path) -> None:
    cpu_use.SINCE_START.restart()
    time.sleep(cpu_use.SHORTEST_WINDOW)  # long enough to measure, were there something to read
    monkeypatch.setattr(cpu_use, "PROC_STAT", str(tmp_path / "missing"))
    assert chosen(runtime.set_threads("auto"))["load"]


def test_auto_uses_the_load_average_when_too_little_time_has_passed_to_measure(threads_kept) -> None:
    cpu_use.SINCE_START.restart()
    assert chosen(runtime.set_threads("auto"))["load"]


@pytest.mark.e2e
def test_a_forked_child_measures_from_the_fork(threads_kept) -> None:
    """process_time starts again at 0 in a forked child: its window must start there too,
    not at the parent's start."""
    cpu_use.SINCE_START.restart()
    time.sleep(cpu_use.SHORTEST_WINDOW + 0.05)  # the parent's window is long enough to measure
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            first = [runtime.set_threads("auto"), torch.get_num_threads()]
            time.sleep(0.4)
            os.write(write, json.dumps([first, [runtime.set_threads("auto"), torch.get_num_threads()]]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        first, second = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert chosen(*first)["load"]  # right after the fork: too soon to measure
    if os.path.exists("/proc/stat"):
        assert 0.4 <= chosen(*second)["seconds"] < 0.7  # measured from the fork


def test_auto_keeps_omp_num_threads_as_torchrun_sets_it(threads_kept, monkeypatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.set_threads("auto") == "1 thread(s) (OMP_NUM_THREADS=1)" and torch.get_num_threads() == 1


def test_a_count_forces_that_count(threads_kept) -> None:
    cfg = compose("train", "dataset=mnist_sample", "trainer.num_threads=1")
    schema.check(cfg)
    assert runtime.set_threads(cfg.trainer.num_threads) == "1 thread(s) (trainer.num_threads=1)"
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["0", "-2", "many", "true", "1.5"])
def test_a_thread_count_that_is_not_auto_or_a_count_is_refused(value: str) -> None:
    with pytest.raises(UserError, match=f"trainer.num_threads={value if value != 'true' else 'True'}: choose auto"):
        schema.check(compose("train", "dataset=mnist_sample", f"trainer.num_threads={value}"))


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_deterministic_resume_keeps_the_thread_count_its_run_trained_with(deterministic: bool, threads_kept,
                                                                             tmp_path, caplog) -> None:
    """The thread count sets the order of a float sum, so a resumed deterministic run repeats an
    uninterrupted one bit for bit only with the count that run trained with, whatever auto would
    choose now; without trainer.deterministic auto chooses afresh."""
    if runtime.usable_cores() < 2:
        pytest.skip("one core: every count auto could keep is 1")
    run = train_here(tmp_path / "run", *tiny(f"trainer.deterministic={deterministic}", "trainer.num_threads=2"))
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["progress"]["threads"] == 2
    state["finished"] = False  # as if stopped before its end
    torch.save(state, last)
    torch.set_num_threads(1)
    again = [f"resume={run}", "trainer.num_threads=auto"]
    with caplog.at_level("INFO", logger="cnn_cli.train"):
        resumed = train.prepare(compose("train", *again), run, again)
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("threads: "))
    if deterministic:
        assert said.startswith("threads: 2 thread(s) (trainer.num_threads=auto, trainer.deterministic=true: as the "
                               "run it resumes")
        assert torch.get_num_threads() == resumed.progress.threads == 2
    else:
        assert "busy" in said or "load" in said  # auto's own choice
        assert resumed.progress.threads == torch.get_num_threads()
