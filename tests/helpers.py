"""What many test modules share: the installed commands and how to run one, the smallest real
training run, MNIST files in torchvision's layout, and what a refusal looks like.

Imported by the test modules (`from helpers import ...`); pytest puts this folder on sys.path.
"""

from __future__ import annotations

import copy
import logging
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

# the console scripts (cnn-train, ...) pip installed beside the Python that runs the tests
BIN = Path(sys.executable).parent

# for processes run side by side on a small machine: one thread each
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# "no GPU" holds on any machine
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}

# the smallest real training run: the bundled sample (nothing is downloaded), one epoch of two
# steps, one validation batch, and no progress bars in the captured output
TINY = ["dataset=mnist_sample", "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.progress=false"]

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


def compose(config: str, *overrides: str, hydra: bool = False):
    """A shipped config (train, summary, eval, predict, export) composed with `overrides` as its
    command composes it, cli.register() first; hydra=True keeps the hydra node (run folder,
    callbacks). The one way the tests compose, in a test, a fixture or a helper alike.

    Hydra takes a tenth of a second a compose, and the fast tier asks for hundreds, most of them
    over a few choices of configs (model=, dataset=, ...). Hydra composes those choices, then sets
    the other overrides' values on the result (ConfigLoaderImpl._apply_overrides_to_config); here the
    choices are composed once a process (with the configs in the ConfigStore, which a test may add
    to), and each call sets its values on its own copy with that same Hydra function. The hydra
    node holds the time and the working folder: hydra=True composes afresh."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnn_cli.cli import register

    register()
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = [override for override in parsed if not _chooses_a_config(override)]
    if hydra or any(override.is_sweep_override() for override in values):  # Hydra refuses a sweep itself
        return _compose(config, overrides, hydra)
    choices = tuple(override.input_line for override in parsed if _chooses_a_config(override))
    key = (config, choices, _stored_configs(ConfigStore.instance().repo))
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(config, choices, hydra)
    composed = copy.deepcopy(_COMPOSED[key])
    ConfigLoaderImpl._apply_overrides_to_config(values, composed)
    return composed


_COMPOSED: dict[tuple, DictConfig] = {}


def _compose(config: str, overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    from hydra import compose as compose_config, initialize_config_module

    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        return compose_config(config, overrides=list(overrides), return_hydra_config=hydra)


def _chooses_a_config(override) -> bool:
    """model=lenet5, hydra/launcher=joblib, an override of hydra's settings, one with @package:
    what Hydra's defaults list takes, not a value it sets afterwards."""
    group = override.key_or_group.split("/")[0]
    return override.package is not None or group.split(".")[0] == "hydra" or group in _config_groups()


def _config_groups() -> set[str]:
    """The shipped config groups and those in the ConfigStore (schema/, a test's own)."""
    from importlib import resources

    shipped = {folder.name for folder in resources.files("cnn_cli.configs").iterdir() if folder.is_dir()}
    return shipped | {name for name, entry in ConfigStore.instance().repo.items() if isinstance(entry, dict)}


def _stored_configs(group: dict) -> tuple:
    """The ConfigStore's entries, each by name and identity: a test that stores a config of its own
    (test_userconfig) composes afresh."""
    return tuple((name, _stored_configs(entry) if isinstance(entry, dict) else id(entry))
                 for name, entry in group.items())


def train_here(run: Path, *overrides: str) -> Path:
    """A real training run in this process, as cnn-train runs one (train.prepare, then
    train.train) into the folder `run`, less what Hydra adds (.hydra/, train.log): for tests
    that read what a run leaves (metrics.json, checkpoints, TensorBoard events)."""
    from cnn_cli import train

    train.train(train.prepare(compose("train", *overrides), run, list(overrides)))
    return run


def tiny(*changes: str) -> list[str]:
    """TINY with `changes`: a key TINY sets takes the new value, other keys are added."""
    settings = dict(override.split("=", 1) for override in [*TINY, *changes])
    return [f"{key}={value}" for key, value in settings.items()]


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user runs a command in, without the switches that turn its one-line
    errors into tracebacks (a developer may have them set), and with `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CNN_CLI_FULL_ERROR")}
    return {**env, **(extra or {})}


def cnn(tool: str, *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run an installed command (`cnn("cnn-train", "model=lenet5", cwd=...)`) in its own process
    as a user would, its output captured as text. `env` is added to the user's environment;
    with `check` the command must succeed."""
    proc = subprocess.run([str(BIN / tool), *args], cwd=cwd, env=user_env(env), capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, f"{tool} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# the function each console script calls (pyproject.toml's [project.scripts])
ENTRY_POINTS = {"cnn-summary": "summary", "cnn-train": "train", "cnn-eval": "evaluate", "cnn-predict": "predict",
                "cnn-export": "export"}


class Started:
    """A command started in its own process, its output going to files (so it never blocks on
    a full pipe): poll it, then take its result, as subprocess.run gives it.

    fork=False runs the installed console script, as a user does. fork=True runs the same entry
    point in a forked copy of this process: still a real process, with its own exit status,
    stdout, stderr, working folder and environment, but without the seconds of interpreter and
    torch start-up (the modules are loaded already). That is for a catalogue of cases of one
    contract (each bad input: exit 2, one line), a few of which still run the script itself.
    Start one only from the main thread (a fork copies one thread)."""

    def __init__(self, tool: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240,
                 fork: bool = True):
        self.args = [str(BIN / tool), *args]
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._deadline, self._timeout = time.monotonic() + timeout, timeout
        self.returncode: int | None = None
        environ = user_env(env)
        if fork and environ.get("CUDA_VISIBLE_DEVICES") != "" and _cuda_started():
            fork = False  # a forked child cannot use the GPU this process has started: the script can
        if not fork:
            self._popen = subprocess.Popen(self.args, cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=self._out,
                                           stderr=self._err)
            self.pid = self._popen.pid
            return
        self._popen = None
        _load_commands()
        self.pid = os.fork()
        if self.pid == 0:
            _run_entry_point(ENTRY_POINTS[tool], self.args, cwd, environ, self._out.fileno(), self._err.fileno())

    def poll(self) -> int | None:
        """The exit status once it ended (-N: killed by signal N); past its timeout it is killed."""
        if self.returncode is None:
            if time.monotonic() > self._deadline:
                os.kill(self.pid, 9)
                self._reap(0)
                self._err.seek(0, os.SEEK_END)
                self._err.write(f"\ntimed out after {self._timeout} s\n".encode())
            else:
                self._reap(os.WNOHANG)
        return self.returncode

    def _reap(self, flags: int) -> None:
        if self._popen is not None:
            self.returncode = self._popen.wait() if flags == 0 else self._popen.poll()
            return
        pid, status = os.waitpid(self.pid, flags)
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def result(self) -> subprocess.CompletedProcess:
        """Wait for it; its exit status and output."""
        while self.poll() is None:
            time.sleep(0.02)
        out, err = [(f.seek(0), f.read().decode(errors="replace"), f.close())[1] for f in (self._out, self._err)]
        return subprocess.CompletedProcess(self.args, self.returncode, out, err)


def _cuda_started() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _load_commands() -> None:
    """Import, once, what the commands import (torch, torchvision, Hydra, ONNX Runtime...), so
    that no forked child pays for it; and leave those objects to the children as they are
    (gc.freeze: a child's garbage collection would otherwise touch, and so copy, every page)."""
    import gc

    from cnn_cli import cli, evaluate, export, predict, train  # noqa: F401

    gc.freeze()


def _run_entry_point(function: str, argv: list[str], cwd: Path, environ: dict[str, str], out: int, err: int) -> None:
    """In the forked child: become what a fresh interpreter running the console script would
    be (argv, folder, environment, plain stdout and stderr on their own files, Python's own
    warning filters, no log handlers, one thread), run it, and exit with its status."""
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = open(os.devnull)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace", buffering=1)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = argv
        logging.root.handlers.clear()  # pytest's capture handlers would swallow what the command logs
        logging.root.setLevel(logging.WARNING)
        warnings.showwarning = warnings._showwarning_orig  # pytest records warnings; a command prints them
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # Python's defaults
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 would; and fork-safe
            if environ.get("CUDA_VISIBLE_DEVICES") == "":  # what it means to a fresh interpreter's torch
                torch.cuda.is_available, torch.cuda.device_count = (lambda: False), (lambda: 0)
        from hydra.core.global_hydra import GlobalHydra

        from cnn_cli import cli

        GlobalHydra.instance().clear()
        getattr(cli, function)()
        code = 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_side_by_side(start: dict[str, Callable[[], Started]], at_once: int = 2,
                     ) -> dict[str, subprocess.CompletedProcess]:
    """Start each command (at most `at_once` running) and return each one's result by name."""
    waiting, running, done = list(start.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < at_once:
            name, begin = waiting.pop(0)
            running[name] = begin()
        for name in [name for name, proc in running.items() if proc.poll() is not None]:
            done[name] = running.pop(name).result()
        time.sleep(0.01)
    return done


def one_error_line(proc: subprocess.CompletedProcess, after_log: bool = False) -> str:
    """The refusal of bad input, checked and returned: exit status 2, exactly one line on
    stderr, "error: " and a message, and no traceback anywhere.

    after_log: the process trained (and logged to stderr) before it failed; only the lines
    that start with "error:" must then be one."""
    shown = f"exit {proc.returncode}\n--- stdout:\n{proc.stdout[-2000:]}\n--- stderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    lines = proc.stderr.splitlines()
    if after_log:
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: ") and lines[0][len("error: "):].strip(), shown
    return lines[0]


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, what: str, timeout: float = 120,
             log: Path | None = None) -> None:
    """Return once `condition()` holds while `proc` runs. The timeout only bounds a failure:
    `what` did not happen in time, or the process ended first."""
    deadline = time.monotonic() + timeout
    tail = lambda: log.read_text()[-3000:] if log else ""  # noqa: E731
    while not condition():
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode}) first\n{tail()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{tail()}"
        time.sleep(0.05)


def mnist_images(n: int, test: bool) -> np.ndarray:
    """(n, 28, 28) uint8; pixel [0,0] and [0,1] hold the index, [0,2] says train (0) or test (1)."""
    idx = np.arange(n)
    images = ((idx[:, None, None] * 7 + np.arange(28)[None, :, None] * 3 + np.arange(28)[None, None, :]) % 256)
    images = images.astype(np.uint8)
    images[:, 0, 0] = idx // 256
    images[:, 0, 1] = idx % 256
    images[:, 0, 2] = int(test)
    return images


def write_idx(folder: Path, n_train: int = 300, n_test: int = 50) -> Path:
    """The four uncompressed IDX files torchvision's MNIST family reads from <root>/<Class>/raw/:
    the images of `mnist_images`, labels 0, 1, ..., 9, 0, 1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, test in (("train", n_train, False), ("t10k", n_test, True)):
        images = mnist_images(n, test)
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder
