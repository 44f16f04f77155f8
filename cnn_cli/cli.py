"""Thin entry points: each composes its Hydra config and hands it to one module."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shlex
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra._internal.hydra import Hydra
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnn_cli.builder import BuiltModel, build_from_config
from cnn_cli.layers import CATALOGUE, COMPOSITES
from cnn_cli import bounds, data, distributed, rundir, schema, streams, sweep, userconfig
from cnn_cli.errors import (EXIT_BAD_INPUT, REPORTED, TRACEBACK_ENV, Refused, UserError, describe, report_user_errors,
                            want_traceback)
from cnn_cli.summary import format_table

# configs/ ships as the cnn_cli.configs package, in a checkout and in a wheel alike
CONFIG_PATH = "pkg://cnn_cli.configs"
log = logging.getLogger("cnn_cli")


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


def register() -> None:
    """Make known what the configs name but do not define: the schemas their defaults lists
    choose (Hydra's ConfigStore) and the resolvers their Hydra settings call (${cnn_run_dir:...}).
    Every entry point calls it before Hydra composes (under torchrun, every rank), and so
    must code that composes the configs itself (tests, benchmarks); calling it again changes
    nothing. The joblib and submitit launchers' worker processes get both from Hydra, which
    sends its ConfigStore and OmegaConf's resolvers along with each job."""
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
        if isinstance(err, ValueError) and str(err).startswith("Unable to configure"):  # logging.config's
            err = UserError(f"hydra.job_logging: {err} ({err.__cause__}); fix that setting or leave it out")
        if isinstance(err, ValueError) and str(err).startswith("Only one of --run"):  # Hydra's own flags
            err = UserError(f"{err}; for the config of a sweep's job: the same command without -m, with --cfg job")
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


def explain(built: BuiltModel) -> None:
    """Show the layer table, then each shape warning."""
    print(format_table(built))
    for warning in built.warnings:
        log.warning(warning)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="summary")
@report_user_errors
def _summary(cfg: DictConfig) -> None:
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    data.resolve(cfg.dataset)  # the dataset's checks, as cnn-train runs them (imagefolder: the shape from its files)
    explain(build_from_config(cfg))


def summary() -> None:
    """cnn-summary model=X [dataset=Y]: the layer table, no data, no training."""
    main(_summary)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@report_user_errors
def _train(cfg: DictConfig) -> float:
    from cnn_cli import train  # imported here: it imports torchvision, slow to import, which cnn-summary need not

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    single = hydra_cfg.mode == RunMode.RUN
    try:
        if _WRITES:
            rundir.claim(run_dir)  # a single run claimed it before Hydra wrote there; a sweep's job does here
        try:
            run = train.prepare(cfg, run_dir, list(hydra_cfg.overrides.task))
        except REPORTED:
            if single and _WRITES:  # a sweep keeps each failed job's record
                rundir.discard_attempt(run_dir, hydra_cfg.output_subdir)
            raise
        result = train.train(run)
        if not run.cfg.trainer.keep_run_folder and _WRITES:
            rundir.remove_run(run_dir)
            log.info("trainer.keep_run_folder=false: removed %s", run_dir)
        return result
    finally:
        rundir.release(run_dir)  # the next job of a sweep may run in this process


def train() -> None:
    """cnn-train [overrides]: train, validate each epoch, test the best checkpoint."""
    main(_train)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@report_user_errors
def _eval(cfg: DictConfig) -> None:
    from cnn_cli.evaluate import run_eval

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError("no checkpoint given: cnn-eval checkpoint=outputs/NAME/DATE_TIME/checkpoints/best.pt (or a run "
                        "folder)")
    report = run_eval(cfg)
    print(json.dumps({k: report[k] for k in ("split", "dataset", "loss", "accuracy", "recorded_accuracy")}
                     | {"fallback": report["test_set"]["fallback"]}))


def evaluate() -> None:
    """cnn-eval checkpoint=PATH [split=test|val] [fuse_bn=true]."""
    main(_eval)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@report_user_errors
def _predict(cfg: DictConfig) -> None:
    from cnn_cli.predict import run_predict

    if OmegaConf.is_missing(cfg, "checkpoint") or OmegaConf.is_missing(cfg, "inputs"):
        raise UserError("give a checkpoint and inputs: cnn-predict "
                        "checkpoint=outputs/NAME/DATE_TIME/checkpoints/best.pt inputs=[photo.png,pictures/]")
    if run_predict(cfg):  # some files were unreadable: listed, skipped
        sys.exit(1)


def predict() -> None:
    """cnn-predict checkpoint=PATH inputs=[a.png,dir/] [top_k=3] [output=preds.csv]."""
    main(_predict)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@report_user_errors
def _export(cfg: DictConfig) -> None:
    from cnn_cli.export import describe, run_export

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError("no checkpoint given: cnn-export checkpoint=outputs/NAME/DATE_TIME/checkpoints/best.pt "
                        "format=onnx")
    print(describe(run_export(cfg)))


def export() -> None:
    """cnn-export checkpoint=PATH format=onnx|torchscript|exported [fuse_bn=true] [preprocess=true]."""
    main(_export)
