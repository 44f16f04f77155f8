"""trainer.num_threads: auto fits the free cores; N forces N; anything else is refused in one line."""

from __future__ import annotations

import pytest
import torch

from cnn_cli import runtime, schema
from cnn_cli.errors import UserError
from helpers import compose



@pytest.fixture
def threads_kept(monkeypatch):
    """The test may change torch's thread count and OMP_NUM_THREADS; both come back after it."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, load, processes, expected", [
    (2, 0.1, 1, 2),   # idle: every core
    (2, 1.2, 1, 1),   # one core busy: the other one
    (2, 3.0, 1, 1),   # no free core: one thread, never zero
    (16, 4.4, 1, 12),
    (16, 0.0, 4, 4),  # four processes share the cores
    (1, 0.0, 1, 1),
])
def test_auto_takes_the_cores_the_load_leaves_free(cores: int, load: float, processes: int, expected: int) -> None:
    assert runtime.auto_threads(cores, load, processes) == expected


def test_auto_is_the_default_and_sets_and_names_its_choice(threads_kept) -> None:
    assert compose("train", "dataset=mnist_sample").trainer.num_threads == "auto"
    said = runtime.set_threads("auto")
    cores, load = runtime.free_cores()
    assert torch.get_num_threads() == runtime.auto_threads(cores, load)
    assert said.startswith(f"{torch.get_num_threads()} thread(s)") and f"{cores} cores" in said


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
