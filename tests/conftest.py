"""Shared pytest setup: the markers and options these tests use, and the rule that only
tests marked e2e start processes, so `pytest -m "not e2e and not slow"` is the fast tier."""

from __future__ import annotations

import os
import subprocess

import pytest

# One thread a test process, set before torch starts: pytest-xdist gives each worker a core, and a
# test that compares two runs number for number needs both to sum in one order (trainer.num_threads=auto
# keeps OMP_NUM_THREADS; its own choice, which follows other processes' load, is tested with it unset).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts processes (cnn-train and friends, each paying torch's start-up); "
                                       "the fast tier is -m 'not e2e'")
    config.addinivalue_line("markers", "slow: in process, but long (every model in every export format, the "
                                        "property test); the fast tier leaves it out too")
    config.addinivalue_line("markers", "wheel: builds and installs the wheel; deselect with -m 'not wheel'")


def pytest_addoption(parser):
    parser.addoption("--stacks", type=int, default=24,
                     help="how many random layer stacks tests/test_property.py trains (default 24)")
    parser.addoption("--stacks-seed", type=int, default=0, help="which random stacks (default 0)")


_POPEN = subprocess.Popen


class _NoProcesses(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        raise AssertionError(f"this test starts a process ({args!r}): mark it @pytest.mark.e2e")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test not marked e2e may not start a process, nor may the fixtures set up for it
    (a module-scoped training run included)."""
    subprocess.Popen = _POPEN if item.get_closest_marker("e2e") else _NoProcesses


def pytest_runtest_teardown(item: pytest.Item) -> None:
    subprocess.Popen = _POPEN
