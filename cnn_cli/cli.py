"""The console scripts: a table of commands, each composed by Hydra and run by main, which
turns bad input into one `error:` line and exit status 2."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import shlex
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from cnn_cli import cpu_use  # noqa: F401  first: its window on other processes' CPU use spans start-up

import hydra
from hydra._internal.hydra import Hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from cnn_cli.layers import CATALOGUE, COMPOSITES
from cnn_cli import bounds, commands, distributed, rundir, schema, streams, sweep, userconfig
from cnn_cli.errors import (EXIT_BAD_INPUT, REPORTED, TRACEBACK_ENV, Refused, UserError, describe, report_user_errors,
                            want_traceback)

# configs/ ships as the cnn_cli.configs package, in a checkout and in a wheel alike
CONFIG_PATH = "pkg://cnn_cli.configs"

# Under torchrun every process composes the config, but only rank 0 writes: the others get
# no run folder of their own (the temp folder, which exists), no .hydra record and no log.
_WRITES = distributed.this_process().main


_STARTED = datetime.datetime.now()  # names a resume's record, however often it is resolved


def _run_dir(resume: str | None, default: str) -> str:
    """A resumed run continues in its own folder."""
    if not _WRITES:
        return tempfile.gettempdir()
    run = rundir.resumed_run(resume)
    return str(run) if run is not None else default


def _hydra_subdir(resume: str | None) -> str | None:
    """A resume records its own composed config beside the original run's .hydra/."""
    if not _WRITES:
        return None
    return f".hydra/resume-{_STARTED:%Y-%m-%d_%H-%M-%S}" if rundir.resumed_run(resume) is not None else ".hydra"


def _log_file(path: str) -> str:
    return path if _WRITES else os.devnull


def _layer_names() -> str:
    """What cnn-summary --help lists: every layer a model config may name, wrapped."""
    return textwrap.fill(", ".join([*sorted(CATALOGUE), *COMPOSITES]), width=96, initial_indent="  ",
                         subsequent_indent="  ")


def _config_groups(*only: str) -> str:
    """What --help lists: each config group a user chooses from (or `only` these), with its
    options, as Hydra lists them, less Hydra's own groups and schema/* (the types behind the
    YAML files)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines = []

    def walk(parent: str) -> None:
        for group in sorted(loader.list_groups(parent)):
            path = f"{parent}/{group}" if parent else group
            if path in ("hydra", "schema") or (only and path not in only):
                continue
            options = loader.get_group_options(path)
            if options:
                lines.append(f"{path}: {', '.join(options)}")
            walk(path)

    walk("")
    return "\n".join(lines)


_RESOLVERS = {"cnn_run_dir": _run_dir, "cnn_hydra_subdir": _hydra_subdir, "cnn_log_file": _log_file,
             "cnn_layer_names": _layer_names, "cnn_job_dir": sweep.job_folder, "cnn_run_name": rundir.run_name,
              "cnn_config_groups": _config_groups}


@functools.cache
def register() -> None:
    """Make known what the configs name but do not define: the schemas their defaults lists
    choose (Hydra's ConfigStore) and the resolvers their Hydra settings call (${cnn_run_dir:...}).
    Every entry point calls it before Hydra composes (under torchrun, every rank), and so
    must code that composes the configs itself (tests, benchmarks). Both are process-wide, so
    it does its work once: storing the schemas takes 40 ms, a fourth of a compose. The joblib
    and submitit launchers' worker processes get both from Hydra, which sends its ConfigStore
    and OmegaConf's resolvers along with each job."""
    schema.register()
    for name, resolver in _RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def _compose_once(argv: list[str]) -> None:
    """Hydra composes the whole config once only to read hydra.mode, then again to run (a
    fifth of a second or more, docs/performance.md). Here hydra.mode can come only from the
    command line (userconfig.py: no config file reaches hydra.*), so without it there the answer
    is known, Hydra's own default (null: -m decides): skip that first compose."""
    if not any(arg.lstrip("+~").split("=", 1)[0] == "hydra.mode" for arg in argv):
        Hydra.get_mode = lambda self, config_name, overrides: None


def main(app: Callable[[], Any]) -> None:
    """Run a Hydra app so that Hydra's own complaints (an unknown config option, a misspelt
    key, a wrong type, a folder it cannot create) read like ours: one line, exit status 2;
    after a sweep, print its table and exit 1 if any job failed.

    Hydra prints its errors over many lines and exits 1, unless HYDRA_FULL_ERROR=1, when it
    raises them: we set that, catch them here and say what to fix."""
    os.environ.setdefault(TRACEBACK_ENV, "1" if want_traceback() else "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    streams.protect()
    register()
    try:
        try:
            bounds.check_arguments(sys.argv[1:])
            sys.argv[1:] = userconfig.take_config_dirs(sys.argv[1:])  # read by us, never on Hydra's search path
            _compose_once(sys.argv[1:])
            app()
        except Refused as refused:
            raise refused.args[0] from None
    except KeyboardInterrupt:
        if want_traceback():
            raise
        _interrupted()
    except Exception as err:
        swept = sweep.started()
        if swept is not None and sweep.report(swept):  # the jobs' own errors were printed as they failed
            sys.exit(1)
        attempt = rundir.attempt if rundir.attempt is not None and rundir.attempt[0].is_dir() else None
        if attempt is not None:  # Hydra failed before training began: leave nothing of the attempt
            rundir.discard_attempt(*attempt)
        if isinstance(err, ValueError):
            err = _about_the_command_line(err)
        if not isinstance(err, REPORTED) or want_traceback():
            raise
        message = describe(err)
        if isinstance(err, OSError) and not isinstance(err, HydraException):
            if attempt is not None and not err.filename:  # a write into the run folder failed (a full disk)
                message = (f"cannot write the run's record in {attempt[0]}: {err.strerror or err}; nothing of "
                           "this attempt was kept. Free some space, then run again")
            else:  # Hydra failing to make the run folder (a missing config is an IOError too)
                message += "; choose the run folder with hydra.run.dir=PATH"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    swept = sweep.started()
    if swept is not None and sweep.report(swept):
        sys.exit(1)
    if swept is None:  # a sweep's launcher may still have workers to stop at exit
        _exit_now()


def _about_the_command_line(err: ValueError) -> Exception:
    """A ValueError that Hydra's flag parsing or logging.config (given hydra.job_logging) raised
    is about the command line: a UserError, known by where it was raised, not by its words."""
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    raised_in = frame.tb_frame.f_globals.get("__name__") if frame is not None else None
    if raised_in == "logging.config":
        return UserError(f"hydra.job_logging: {err} ({err.__cause__}); fix that setting or leave it out")
    if raised_in == "hydra._internal.utils":  # two of its flags at once
        return UserError(f"{err}; for the config of a sweep's job: the same command without -m, with --cfg job")
    return err


def _exit_now() -> None:
    """Exit 0 at once, skipping Python's teardown of every module torch, Hydra and TensorBoard
    loaded (about half a second, docs/performance.md). Everything is written and closed by
    now: checkpoints and metrics.json by atomic renames, TensorBoard's writer by train();
    the log handlers and the two streams are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _interrupted() -> NoReturn:
    """Ctrl-C where no handler saves (a second one while training saves, image decoding, an
    export): one line and exit status 130; an attempt that saved no checkpoint leaves nothing."""
    attempt = rundir.attempt if rundir.attempt is not None and rundir.attempt[0].is_dir() else None
    last = attempt[0] / "checkpoints" / "last.pt" if attempt is not None else None
    if last is not None and last.is_file():
        print(f"interrupted; last.pt is kept: continue with cnn-train resume={shlex.quote(str(attempt[0]))}",
              file=sys.stderr)
    elif attempt is not None:
        rundir.discard_attempt(*attempt)
        print("interrupted before the run saved a checkpoint; start it again", file=sys.stderr)
    else:
        print("interrupted; nothing was written", file=sys.stderr)
    sys.exit(130)


@dataclass(frozen=True)
class Command:
    """One console script: its Hydra config (configs/NAME.yaml), what it does with the composed
    config, and the keys it cannot start without, with the line that says how to give them."""

    config: str
    run: Callable[[DictConfig], Any]
    needs: tuple[str, ...] = ()
    usage: str = ""


_CHECKPOINT = "checkpoint=outputs/NAME/DATE_TIME/checkpoints/best.pt"
COMMANDS: dict[str, Command] = {
    "cnn-summary": Command("summary", commands.summary),
    "cnn-train": Command("train", commands.train),
    "cnn-eval": Command("eval", commands.evaluate, ("checkpoint",),
                        f"no checkpoint given: cnn-eval {_CHECKPOINT} (or a run folder)"),
    "cnn-predict": Command("predict", commands.predict, ("checkpoint", "inputs"),
                           f"give a checkpoint and inputs: cnn-predict {_CHECKPOINT} inputs=[photo.png,pictures/]"),
    "cnn-export": Command("export", commands.export, ("checkpoint",),
                          f"no checkpoint given: cnn-export {_CHECKPOINT} format=onnx"),
}


def entry_point(name: str) -> Callable[[], None]:
    """The console script `name` (pyproject.toml's [project.scripts]): Hydra composes its
    config, then the command runs, its bad input reported by report_user_errors and main."""
    command = COMMANDS[name]

    def job(cfg: DictConfig) -> Any:
        if any(OmegaConf.is_missing(cfg, key) for key in command.needs):
            raise UserError(command.usage)
        return command.run(cfg)

    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=command.config)(report_user_errors(job))

    def script() -> None:
        main(app)

    script.__doc__ = command.run.__doc__
    return script


summary = entry_point("cnn-summary")
train = entry_point("cnn-train")
evaluate = entry_point("cnn-eval")
predict = entry_point("cnn-predict")
export = entry_point("cnn-export")
