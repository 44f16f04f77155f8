"""Checkpoints under attack and under crashes, with the real cnn-train and cnn-eval.

- A checkpoint is data: one whose pickle would run code is refused by every command.
- SIGKILL at any moment (inside a write included) never leaves a torn or missing checkpoint.
- Kill, resume, kill, resume ends with exactly the weights of an uninterrupted run.
- A full disk (RLIMIT_FSIZE) fails the write cleanly and keeps the previous last.pt.
- A file that is not a checkpoint (empty, torn, foreign) is reported in one line.

One module fixture runs the killed runs (two chains of four SIGKILLs, in parallel, beside
an uninterrupted run); the tests below read what it saw. Process start-up (importing
torch) is most of the cost, so the processes run side by side where they can.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from cnn_cli.checkpoint import FORMAT
from helpers import BIN, one_error_line, wait_for

pytestmark = pytest.mark.e2e  # every test here starts cnn-train or friends

KEYS = set(FORMAT)  # what every checkpoint holds
TMP = re.compile(r"\.(last|best)\.pt\.(\d+)\.\w+\.tmp")  # .NAME.PID.RANDOM.tmp

# a tiny network with the state a resume must restore exactly: batchnorm running
# statistics, dropout (the RNG), SGD momentum and a per-step cosine schedule
TINY_MODEL = """\
name: tiny_drop
layers:
  - flatten
  - linear: {out_features: 64}
  - batchnorm1d
  - relu
  - dropout: {p: 0.25}
  - linear: {out_features: "${dataset.num_classes}"}
"""
EPOCHS = 80
# a checkpoint (last.pt, and best.pt on improvement) every 2 steps
RUN = ["model=tiny_drop", "dataset=mnist_sample", f"trainer.epochs={EPOCHS}", "trainer.limit_train_batches=2",
       "trainer.limit_val_batches=1", "trainer.progress=false", "trainer.device=cpu", "trainer.deterministic=true",
       "trainer.num_threads=1", "trainer.log_every_n_steps=1"]
START_TIMEOUT = 120  # seconds for a process to write its first checkpoint (mostly importing torch)
SEED = 0  # the random kills' delays after a checkpoint

# Loaded at start-up (as sitecustomize, from PYTHONPATH) by a cnn-train that is to be killed
# inside a checkpoint write, CNN_TEST_PAUSE=NAME:N:FD: its Nth write of NAME stops just before
# the rename, the new file complete under its temporary name, says so on file descriptor FD and
# waits there for the SIGKILL. So the kill lands inside that write every time, however fast.
PAUSE_IN_WRITE = """\
import os
import time

_name, _nth, _fd = os.environ["CNN_TEST_PAUSE"].split(":")
_writes = 0
_replace = os.replace


def _replace_or_pause(src, dst, *args, **kwargs):
    global _writes
    if os.path.basename(str(src)).startswith(f".{_name}.{os.getpid()}."):
        _writes += 1
        if _writes == int(_nth):
            os.write(int(_fd), b"paused\\n")
            time.sleep(600)
    return _replace(src, dst, *args, **kwargs)


os.replace = _replace_or_pause
"""


def train_cmd(*args: str, config_dir: Path | None = None) -> list[str]:
    return [str(BIN / "cnn-train"), *(["--config-dir", str(config_dir)] if config_dir else []), *args]


def stamp(path: Path) -> tuple[int, int] | None:
    """Which version of a file is there (each os.replace brings a new inode and mtime)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------
# the killed runs


@dataclass
class Kill:
    """The checkpoints folder right after one SIGKILL."""

    pid: int
    how: str  # random | last-write | best-write
    seen_step: int | None  # last.pt's progress.step read just before the kill
    names: list[str]  # the checkpoints folder
    run_tmp: list[str]  # *.tmp files in the run folder itself
    states: dict[str, Any]  # *.pt name -> {"keys", "progress", "finished"}, or the load error as a string


@dataclass
class Chain:
    name: str
    run: Path
    kills: list[Kill] = field(default_factory=list)


@dataclass
class KilledRuns:
    chains: list[Chain]
    full: Path  # the uninterrupted run


def _snapshot(run: Path, pid: int, how: str, seen_step: int | None) -> Kill:
    ckpt = run / "checkpoints"
    names = sorted(os.listdir(ckpt))
    states: dict[str, Any] = {}
    for name in names:
        if name.endswith(".pt"):
            try:
                state = load(ckpt / name)
                states[name] = {"keys": set(state), "progress": state.get("progress"),
                                "finished": state.get("finished")}
            except Exception as err:  # a torn file: recorded, the tests fail on it
                states[name] = f"{type(err).__name__}: {err}"
    return Kill(pid, how, seen_step, names, sorted(p.name for p in run.glob("*.tmp")), states)


def _paused(read_fd: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    """Wait for PAUSE_IN_WRITE's word that `proc` stopped inside the write (the end of the
    pipe instead: it exited first)."""
    try:
        ready, _, _ = select.select([read_fd], [], [], START_TIMEOUT)
        said = os.read(read_fd, 64) if ready else None
    finally:
        os.close(read_fd)
    assert said is not None, f"{what}: not within {START_TIMEOUT} s\n{log.read_text()[-3000:]}"
    assert said == b"paused\n", (f"{what}: cnn-train exited ({proc.wait()}) first; raise EPOCHS if it finished\n"
                                 f"{log.read_text()[-3000:]}")


def _run_chain(chain: Chain, plan: list[str], rng: random.Random, config_dir: Path, shim: Path) -> None:
    """Start the run, SIGKILL it as `plan` says, resume it and kill again, ...

    random: a random moment after the process's first checkpoint; best-write: inside its
    first write of best.pt (before that epoch's last.pt); last-write: inside its second
    write of last.pt (it saved one before)."""
    last = chain.run / "checkpoints" / "last.pt"
    for i, how in enumerate(plan):
        cmd = (train_cmd(*RUN, f"hydra.run.dir={chain.run}", config_dir=config_dir) if i == 0
               else train_cmd(f"resume={chain.run}"))
        before = stamp(last)
        log = chain.run.parent / f"{chain.name}-{i}.log"
        what = f"{chain.name}[{i}] ({how})"
        with open(log, "w") as out:
            if how == "random":
                proc = subprocess.Popen(cmd, cwd=chain.run.parent, stdout=out, stderr=subprocess.STDOUT)
            else:
                read_fd, write_fd = os.pipe()
                pause = f"best.pt:1:{write_fd}" if how == "best-write" else f"last.pt:2:{write_fd}"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
                       "CNN_TEST_PAUSE": pause}
                proc = subprocess.Popen(cmd, cwd=chain.run.parent, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        pass_fds=(write_fd,))
                os.close(write_fd)  # the child's copy is the pipe's last: its end says the child has gone
        try:
            seen = None
            if how == "random":
                wait_for(lambda: stamp(last) != before, proc, f"{what}: a checkpoint", START_TIMEOUT, log)
                time.sleep(rng.uniform(0.0, 0.3))
                seen = load(last)["progress"]["step"]
            else:
                _paused(read_fd, proc, log, what)
                if how == "last-write":
                    seen = load(last)["progress"]["step"]
            assert proc.poll() is None, f"{chain.name}[{i}] ended before the kill\n{log.read_text()[-3000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        chain.kills.append(_snapshot(chain.run, proc.pid, how, seen))


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory) -> KilledRuns:
    """Two runs SIGKILLed four times each (at random moments after a checkpoint, and inside
    last.pt and best.pt writes), resumed after each kill but the last; beside them the same
    run uninterrupted."""
    tmp = tmp_path_factory.mktemp("killed")
    config_dir = tmp / "conf"
    (config_dir / "model").mkdir(parents=True)
    (config_dir / "model" / "tiny_drop.yaml").write_text(TINY_MODEL)
    shim = tmp / "pause_in_write"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PAUSE_IN_WRITE)
    rng = random.Random(SEED)
    chains = [Chain("x", tmp / "x"), Chain("y", tmp / "y")]
    plans = [["random", "best-write", "last-write", "random"], ["random", "last-write", "random", "random"]]
    full_log = tmp / "full.log"
    with open(full_log, "w") as out:
        full = subprocess.Popen(train_cmd(*RUN, f"hydra.run.dir={tmp / 'full'}", config_dir=config_dir), cwd=tmp,
                                stdout=out, stderr=subprocess.STDOUT)
    errors: list[BaseException] = []

    def run(chain: Chain, plan: list[str], chain_seed: int) -> None:
        try:
            _run_chain(chain, plan, random.Random(chain_seed), config_dir, shim)
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(c, p, rng.getrandbits(32))) for c, p in zip(chains, plans)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert full.wait(timeout=300) == 0, full_log.read_text()[-3000:]
    finally:
        if full.poll() is None:
            full.kill()
            full.wait()
    if errors:
        raise errors[0]
    return KilledRuns(chains, tmp / "full")


def test_a_sigkill_at_any_moment_leaves_only_complete_checkpoints(killed_runs: KilledRuns) -> None:
    for chain in killed_runs.chains:
        killed: set[int] = set()
        previous_step = 0
        for n, kill in enumerate(chain.kills):
            where = f"run {chain.name}, kill {n + 1} ({kill.how}): {kill.names}"
            killed.add(kill.pid)
            assert "last.pt" in kill.names, where
            for name, state in kill.states.items():
                assert name in ("last.pt", "best.pt"), where
                assert isinstance(state, dict), f"{where}: {name} does not load: {state}"
                assert state["keys"] == KEYS, f"{where}: {name} holds {state['keys']}, not {KEYS}"
                assert state["finished"] is False, where
            step = kill.states["last.pt"]["progress"]["step"]
            # the last.pt read before the kill, or a newer one; and this process had saved one
            assert kill.seen_step is None or step >= kill.seen_step, where
            # (a kill inside a best.pt write may come before this process's first last.pt)
            assert step > previous_step or (kill.how == "best-write" and step == previous_step), where
            previous_step = step
            # nothing else: a killed process may leave its own temp file, nothing torn under a real name
            temps = [TMP.fullmatch(name) for name in kill.names if not name.endswith(".pt")]
            assert all(temps), where
            pids = [int(m.group(2)) for m in temps]
            assert set(pids) <= killed, f"{where}: a temp file of a process that was not killed"
            assert len(pids) == len(set(pids)), f"{where}: two temp files of one process"
            assert kill.run_tmp == [], f"{where}: {kill.run_tmp}"
            if kill.how != "random":  # killed inside that write, so the checks above are not vacuous
                assert kill.pid in pids, f"{where}: the killed write left no temp file"


def test_a_resumed_run_removes_the_temp_files_killed_runs_left(killed_runs: KilledRuns) -> None:
    removed = 0
    for chain in killed_runs.chains:
        for n, kill in enumerate(chain.kills):
            left = [name for name in kill.names
                    if TMP.fullmatch(name) and int(TMP.fullmatch(name).group(2)) != kill.pid]
            assert left == [], f"run {chain.name}, after kill {n + 1}: {kill.names}"
            if n:
                removed += sum(bool(TMP.fullmatch(name)) for name in chain.kills[n - 1].names)
    assert removed > 0  # not vacuous: an earlier kill left a temp file that the next resume removed


def test_best_pt_always_holds_the_epoch_last_pt_names_as_best(killed_runs: KilledRuns) -> None:
    first = killed_runs.chains[0].kills[1]  # killed inside a best.pt write, before that epoch's last.pt
    assert first.how == "best-write" and any(name.startswith(f".best.pt.{first.pid}.") for name in first.names), \
        first.names
    for chain in killed_runs.chains:
        for n, kill in enumerate(chain.kills):
            if "last.pt" not in kill.states:  # killed before the first last.pt: it names nothing
                continue
            best_epoch = kill.states["last.pt"]["progress"]["best_epoch"]
            best = kill.states.get("best.pt")
            # best.pt is written before last.pt: never older than the best epoch last.pt names
            assert best is not None and best["progress"]["epoch"] >= best_epoch, (
                f"run {chain.name}, after kill {n + 1} ({kill.how}): last.pt names epoch {best_epoch} as best, "
                f"best.pt holds epoch {best['progress']['epoch'] if best else '(no best.pt)'}")


def test_kill_resume_kill_resume_ends_exactly_like_an_uninterrupted_run(killed_runs: KilledRuns,
                                                                           tmp_path: Path) -> None:
    """Each killed run (four SIGKILLs, three resumes) is resumed once more, to the end."""
    runs = []
    for chain in killed_runs.chains:
        shutil.copytree(chain.run, tmp_path / chain.name)  # the fixture's folders stay unfinished
        runs.append(tmp_path / chain.name)
    procs = [subprocess.Popen(train_cmd(f"resume={run}"), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for run in runs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]

    full = killed_runs.full
    a_metrics = json.loads((full / "metrics.json").read_text())
    assert a_metrics["epochs"] == EPOCHS
    timing = ("img_per_s", "epoch_seconds", "val_seconds")
    for run in runs:
        for name in ("last.pt", "best.pt"):
            a, b = load(full / "checkpoints" / name), load(run / "checkpoints" / name)
            assert b["finished"] == a["finished"]
            assert a["model"].keys() == b["model"].keys()
            for key in a["model"]:
                assert torch.equal(a["model"][key], b["model"][key]), f"{run.name}/{name}: {key} differs"
        b_metrics = json.loads((run / "metrics.json").read_text())
        for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch", "steps", "epochs"):
            assert b_metrics[key] == a_metrics[key], f"{run.name}: {key}"
        assert ([{k: v for k, v in row.items() if k not in timing} for row in b_metrics["history"]]
                == [{k: v for k, v in row.items() if k not in timing} for row in a_metrics["history"]])


# --------------------------------------------------------------------------------------
# a full disk


def test_a_full_disk_fails_the_checkpoint_write_cleanly_and_keeps_the_previous_one(killed_runs: KilledRuns,
                                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed_runs.chains[1].run, run)  # a run killed mid-training, with a good last.pt
    for stale in run.glob("checkpoints/*.tmp"):  # what the kills left is not this test's subject
        stale.unlink()
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    before, best_before = last.read_bytes(), best.read_bytes()
    # every file this process writes is capped: above the log, the TensorBoard events and
    # Hydra's records, inside the first tensor of the checkpoint (as a full disk fails a write
    # anywhere; only a few windows near a record's end happen to give the clean error now)
    limit = len(before) // 4
    assert limit > 5 * (run / "train.log").stat().st_size

    def cap_file_size() -> None:  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.run(train_cmd(f"resume={run}"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=cap_file_size)
    # what holds now: it was the checkpoint write that hit the cap (not the log, which would
    # print "--- Logging error ---"), the previous checkpoint is untouched, no temp file is left
    assert "File too large" in proc.stderr and "Logging error" not in proc.stderr
    assert last.read_bytes() == before and best.read_bytes() == best_before
    assert not load(last)["finished"]
    assert sorted(p.name for p in run.rglob("*.tmp")) == []
    # the report, after the training it logged
    line = one_error_line(proc, after_log=True)
    # best.pt is written first when an epoch improves, so either write may be the one that fails
    assert re.match(rf"error: cannot write {re.escape(str(run / 'checkpoints'))}/(last|best)\.pt: .*; the previous "
                    r"(last|best)\.pt is kept", line), line


# --------------------------------------------------------------------------------------
# checkpoints are data


class CreatesFile:
    """Unpickling this runs open(path, "w"), as a hostile checkpoint's payload would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@dataclass
class Refusal:
    name: str  # variant-command
    key: str  # the command-line key the error names
    marker: Path  # what the payload would create
    run: Path  # the folder holding the hostile checkpoints/last.pt and best.pt
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def refusals(killed_runs: KilledRuns, tmp_path_factory) -> list[Refusal]:
    """Hostile checkpoints where checkpoints go, opened by cnn-eval checkpoint=, cnn-train resume=
    and init_from=: the payload alone, and a complete cnn-cli checkpoint (a real one from a
    killed run) with the payload deep in its config; all three commands on the second. The
    four processes start side by side: starting is most of their cost."""
    tmp = tmp_path_factory.mktemp("hostile")
    genuine = load(killed_runs.chains[0].run / "checkpoints" / "last.pt")
    cases = []
    for variant, command in (("bare", "eval"), ("inside", "eval"), ("inside", "resume"), ("inside", "init_from")):
        name = f"{variant}-{command}"
        marker = tmp / f"{name}.ran"
        payload: Any = CreatesFile(marker)
        if variant == "inside":
            payload = {**genuine, "config": {**genuine["config"], "notes": [payload]}}
        run = tmp / name
        (run / "checkpoints").mkdir(parents=True)
        for ckpt in ("last.pt", "best.pt"):
            torch.save(payload, run / "checkpoints" / ckpt)
        # not vacuous: loaded as code, the file does run its payload
        shutil.copy(run / "checkpoints" / "last.pt", tmp / "probe.pt")
        torch.load(tmp / "probe.pt", weights_only=False)
        assert marker.exists(), name
        marker.unlink()
        cmd = {"eval": [str(BIN / "cnn-eval"), f"checkpoint={run / 'checkpoints' / 'best.pt'}"],
               "resume": train_cmd(f"resume={run}"),
               "init_from": train_cmd("model=mlp", "dataset=mnist_sample", "trainer.device=cpu",
                                      f"init_from={run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp / 'new'}")}
        cases.append((name, {"eval": "checkpoint"}.get(command, command), marker, run, cmd[command]))
    procs = [subprocess.Popen(case[-1], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in cases]
    outputs = [p.communicate(timeout=300) for p in procs]
    results = [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]
    assert not (tmp / "new").exists(), "the refused init_from left its new run folder"
    return [Refusal(name, key, marker, run, result) for (name, key, marker, run, _), result in zip(cases, results)]


def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(refusals: list[Refusal]) -> None:
    for case in refusals:
        assert not case.marker.exists(), f"{case.name}: the checkpoint's code ran"
        line = one_error_line(case.proc)
        assert line.startswith(f"error: {case.key}=") and "refused to open" in line and "could run code" in line, \
            f"{case.name}: {line}"


def test_a_refused_resume_leaves_no_record_in_the_run_folder(refusals: list[Refusal]) -> None:
    (case,) = [c for c in refusals if c.key == "resume"]
    assert case.proc.returncode == 2
    assert sorted(p.name for p in (case.run / ".hydra").glob("resume-*")) == []


def test_an_empty_torn_or_foreign_file_is_reported_in_one_line(killed_runs: KilledRuns, tmp_path: Path) -> None:
    """In-process (no start-up cost): what `checkpoint.load` raises for files that are not
    checkpoints, including the real temp files the kills left behind."""
    from cnn_cli import checkpoint
    from cnn_cli.errors import UserError

    good = (killed_runs.chains[0].run / "checkpoints" / "last.pt").read_bytes()
    # the kills' leftovers: complete (killed after the data was written) or cut short
    torn = {p.name: p.read_bytes() for c in killed_runs.chains for p in (c.run / "checkpoints").glob("*.tmp")
            if p.stat().st_size}
    cut = {"half": good[: len(good) // 2], "first 100 bytes": good[:100], "no zip end": good[:-10],
           "zeros": bytes(1000)}
    known = {"empty (as the 0-byte leftovers)": b"", "short text": b"junk\n"}
    outcomes = {}
    for name, data in {**torn, **cut, **known}.items():
        path = tmp_path / "x.pt"
        path.write_bytes(data)
        try:
            checkpoint.load(path)
            outcomes[name] = "loads"
        except UserError as err:
            outcomes[name] = "one line" if "\n" not in str(err) else f"several lines: {err}"
        except Exception as err:
            outcomes[name] = f"{type(err).__name__}: {err}"
    assert {n: outcomes[n] for n in torn if outcomes[n] not in ("loads", "one line")} == {}
    assert {n: outcomes[n] for n in cut if outcomes[n] != "one line"} == {}
    assert {n: outcomes[n] for n in known if outcomes[n] != "one line"} == {}
