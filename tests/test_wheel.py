"""The wheel: built from the sources, installed apart from the checkout, still finds its
configs (pkg://cnn_cli.configs) and prints the LeNet-5 table.

Select with `pytest -m wheel`, skip with `-m "not wheel"`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.wheel]

REPO = Path(__file__).resolve().parents[1]


# what the checkout holds besides the package sources: never part of a build
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                      ".pytest_cache", "outputs", "data", "multirun", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel from `python -m build --wheel --no-isolation`, whose check of the
    [build-system] requires passes in the dev environment (pip install -e .[dev]).

    It builds from a fresh copy of the checkout's sources: the same files as building at the
    repository root, without leaving build/ and *.egg-info there (a stale build/lib would
    also leak deleted modules into later wheels).
    """
    src = tmp_path_factory.mktemp("src") / "cnn-cli"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    outdir = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
                          cwd=src, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(outdir.glob("cnn_cli-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--disable-pip-version-check", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_wheel_ships_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("cnn_cli/configs/__init__.py", "cnn_cli/configs/hydra/default.yaml", "cnn_cli/assets/mnist_sample.npz",
                 "cnn_cli/builder.py", "cnn_cli/layers.py", "cnn_cli/cli.py"):
        assert name in names, name
    # every config of every group (a group missing from pyproject's packages would be left out)
    shipped = {n.removeprefix("cnn_cli/configs/") for n in names
               if n.startswith("cnn_cli/configs/") and n.endswith(".yaml")}
    assert shipped == {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    # the top-level configs/ ships only as cnn_cli.configs, not as a stray package
    assert not any(n.startswith("configs/") for n in names)
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert entry_points
    text = zipfile.ZipFile(wheel).read(entry_points[0]).decode()
    for script in ("cnn-summary = cnn_cli.cli:summary", "cnn-train = cnn_cli.cli:train",
                   "cnn-eval = cnn_cli.cli:evaluate", "cnn-predict = cnn_cli.cli:predict",
                   "cnn-export = cnn_cli.cli:export"):
        assert script in text


def test_installed_wheel_prints_lenet5_table(site, tmp_path):
    code = ("import sys; sys.argv=['cnn-summary','model=lenet5']; import cnn_cli, cnn_cli.configs; "
            "print('FILE', cnn_cli.__file__); print('CONFIGS', cnn_cli.configs.__file__); "
            "from cnn_cli.cli import summary; summary()")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    module_file = Path(next(line for line in lines if line.startswith("FILE ")).split(" ", 1)[1]).resolve()
    configs_file = Path(next(line for line in lines if line.startswith("CONFIGS ")).split(" ", 1)[1]).resolve()
    assert module_file.is_relative_to(site.resolve()), module_file
    assert configs_file.is_relative_to(site.resolve()), configs_file
    assert not module_file.is_relative_to(REPO)
    assert "Total params: 1,256,080" in proc.stdout
    assert "Linear (2450 -> 500)" in proc.stdout
    assert list(run_dir.iterdir()) == []


def test_installed_wheel_composes_cnn_trains_hydra_settings(site, tmp_path):
    """train.yaml's `- hydra: default` finds configs/hydra/default.yaml in the wheel."""
    code = "import sys; sys.argv=['cnn-train','--cfg','hydra']; from cnn_cli.cli import train; train()"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    for setting in ("_target_: cnn_cli.rundir.OwnRunFolder", "dir: ${cnn_run_dir:${resume},outputs/",
                    "name: train", "hydra: default"):
        assert setting in proc.stdout, setting
    assert list(tmp_path.iterdir()) == []
