"""What each command does with its composed config. cli.py composes the config with Hydra,
runs the command named in its table, and turns bad input into the one `error:` line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnn_cli import data, distributed, rundir
from cnn_cli.builder import BuiltModel, build_from_config, check_norm
from cnn_cli.errors import REPORTED
from cnn_cli.summary import format_table

log = logging.getLogger("cnn_cli")


def summary(cfg: DictConfig) -> None:
    """cnn-summary model=X [dataset=Y]: the layer table, no data, no training."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    check_norm(cfg.model)  # before the data is looked at, as cnn-train's schema.check
    data.resolve(cfg.dataset)  # the dataset's checks, as cnn-train runs them (imagefolder: the shape from its files)
    explain(build_from_config(cfg))


def explain(built: BuiltModel) -> None:
    """Show the layer table, then each shape warning."""
    print(format_table(built))
    for warning in built.warnings:
        log.warning(warning)


def train(cfg: DictConfig) -> float:
    """cnn-train [overrides]: train, validate each epoch, test the best checkpoint."""
    from cnn_cli import train  # imported here: it imports torchvision, slow to import, which cnn-summary need not

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    single = hydra_cfg.mode == RunMode.RUN
    writes = distributed.this_process().main  # under torchrun only rank 0 writes
    try:
        if writes:
            rundir.claim(run_dir)  # a single run claimed it before Hydra wrote there; a sweep's job does here
        try:
            run = train.prepare(cfg, run_dir, list(hydra_cfg.overrides.task))
        except REPORTED:
            if single and writes:  # a sweep keeps each failed job's record
                rundir.discard_attempt(run_dir, hydra_cfg.output_subdir)
            raise
        result = train.train(run)
        if not run.cfg.trainer.keep_run_folder and writes:
            rundir.remove_run(run_dir)
            log.info("trainer.keep_run_folder=false: removed %s", run_dir)
        return result
    finally:
        rundir.release(run_dir)  # the next job of a sweep may run in this process


def evaluate(cfg: DictConfig) -> None:
    """cnn-eval checkpoint=PATH [split=test|val] [fuse_bn=true]."""
    from cnn_cli.evaluate import run_eval

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    report = run_eval(cfg)
    print(json.dumps({k: report[k] for k in ("split", "dataset", "loss", "accuracy", "recorded_accuracy")}
                     | {"fallback": report["test_set"]["fallback"]}))


def predict(cfg: DictConfig) -> None:
    """cnn-predict checkpoint=PATH inputs=[a.png,dir/] [top_k=3] [output=preds.csv]."""
    from cnn_cli.predict import run_predict

    if run_predict(cfg):  # some files were unreadable: listed, skipped
        sys.exit(1)


def export(cfg: DictConfig) -> None:
    """cnn-export checkpoint=PATH format=onnx|torchscript|exported [fuse_bn=true] [preprocess=true]."""
    from cnn_cli.export import describe, run_export

    print(describe(run_export(cfg)))
