"""Run folders named by what the run is (outputs/NAME/DATE_TIME), so TensorBoard's run list and
HParams trial IDs tell runs apart; sweep job folders with rounded values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cnn_cli import rundir
from cnn_cli.sweep import job_folder
from helpers import compose

WHEN = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"


def run_dir(*overrides: str) -> str:
    return compose("train", *overrides, hydra=True).hydra.run.dir


@pytest.mark.parametrize("overrides, name", [
    ((), "lenet5_mnist"),
    (("model=lenet5_bn", "dataset=cifar10"), "lenet5_bn_cifar10"),
    (("experiment=lenet5_bn_onecycle",), "lenet5_bn_onecycle"),
    (("experiment=smoke", "model=resnet20"), "smoke"),  # the experiment's name, as lightning-hydra-template's
    (("name=mine",), "mine"),
    (("name=../../etc/x y",), "etc-x-y"),  # one folder under outputs/, whatever is typed
    (("name=/",), "run"),
    (("name=" + "a" * 300,), "a" * 80),
])
def test_a_run_folder_is_named_by_its_model_and_dataset_or_experiment(overrides: tuple[str, ...], name: str) -> None:
    assert re.fullmatch(rf"outputs/{re.escape(name)}/{WHEN}", run_dir(*overrides)), run_dir(*overrides)


def test_old_and_new_run_folders_both_resume_in_place(tmp_path: Path) -> None:
    for folder in (tmp_path / "outputs/2026-01-01/10-00-00", tmp_path / "outputs/lenet5_mnist/2026-01-01_10-00-00"):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.pt").write_bytes(b"")
        assert rundir.resumed_run(str(folder)) == folder
        assert rundir.resumed_run(str(folder / "checkpoints" / "last.pt")) == folder
        assert run_dir(f"resume={folder}") == str(folder)


def test_sweep_job_folders_round_floats_to_four_significant_digits(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": []}}}))
    params = {"optimizer.lr": "tag(log, interval(0.003, 0.3))", "trainer.batch_size": "choice(64, 128)",
              "optimizer.weight_decay": "x", "model.name": "y"}
    task = ["optimizer.lr=0.012345678901234567", "trainer.batch_size=128", "optimizer.weight_decay=3.0e-05",
            "model.name=v1.2.3"]
    assert job_folder(7, task, str(tmp_path), params) == "7_lr=0.01235_batch_size=128_weight_decay=3e-05_name=v1.2.3"
    assert job_folder(1, ["optimizer.lr=0.1"], str(tmp_path), params) == "1_lr=0.1"  # short values stay as typed
