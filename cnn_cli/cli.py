"""Thin entry points: each composes its Hydra config and hands it to one module."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from cnn_cli.builder import BuiltModel, build_from_config
from cnn_cli.errors import report_user_errors
from cnn_cli.summary import format_table

# configs/ ships as the cnn_cli.configs package, in a checkout and in a wheel alike
CONFIG_PATH = "pkg://cnn_cli.configs"
log = logging.getLogger("cnn_cli")


def explain(built: BuiltModel, out=print) -> None:
    """Show the layer table, then each shape warning."""
    out(format_table(built))
    for warning in built.warnings:
        log.warning(warning)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="summary")
@report_user_errors
def _summary(cfg: DictConfig) -> None:
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    explain(build_from_config(cfg))


def summary() -> None:
    """cnn-summary model=X [dataset=Y]: the layer table, no data, no training."""
    _summary()
