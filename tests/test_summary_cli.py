"""cnn-summary as a person runs it: each case in its own process, its output and exit status read.

A console script pays seconds of interpreter and torch start-up, so the cases run the same
entry point in a forked copy of this process (helpers.Started), but for those in SCRIPT, which
run the installed script itself. They run two at a time, once per module, and each test reads
its own result.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import BIN, Started, one_error_line, run_side_by_side

pytestmark = pytest.mark.e2e

LECTURE_SIZES = ["20 x 28 x 28", "20 x 28 x 28", "20 x 14 x 14", "50 x 14 x 14", "50 x 14 x 14",
                 "50 x 7 x 7", "2450", "500", "500", "10"]

# case id -> (overrides, position named in the message, words of the fix); the shape errors that
# cnn-train gives too are cases of test_bad_input.py's catalogue
ERRORS = {
    "unknown_layer": (["model.layers.1=relux"], "model.layers[1] (relux)",
                      ["unknown layer 'relux'", "did you mean 'relu'?"]),
    "unknown_keyword": (["+model.layers.0.conv2d.kernal_size=3"], "model.layers[0] (conv2d)",
                        ["unknown argument 'kernal_size'", "did you mean 'kernel_size'?"]),
    "groups_not_dividing": (["+model.layers.3.conv2d.groups=3"], "model.layers[3] (conv2d)",
                            ["groups=3", "in_channels=20", "out_channels=50", "divides both"]),
    "empty_layers": (["model.layers=[]"], "model.layers must be", ["non-empty list", "got []"]),
    "layers_not_a_list": (["model.layers=5"], "model.layers must be", ["non-empty list", "got 5"]),
    "wrong_type": (["model.layers.0.conv2d.kernel_size=five"], "model.layers[0] (conv2d)",
                   ["kernel_size must be a whole number", "'five'"]),
    "classes_mismatch": (["model.layers.9.linear.out_features=7"], "model.layers:",
                         ["ends with output 7", "'mnist' has 10 classes",
                          "linear: {out_features: ${dataset.num_classes}}"]),
}

# run as the installed console script: a table, and a refusal
SCRIPT = {"lenet5", "error_unknown_layer"}

MY_MODEL = """\
name: tiny
layers:
  - flatten
  - linear: {out_features: "${dataset.num_classes}"}
"""


def _cases(root: Path) -> dict[str, dict]:
    cases = {
        "lenet5": {"args": ["model=lenet5"]},
        "vgg11_bn": {"args": ["model=vgg11_bn", "dataset=cifar10"]},
        "resnet20": {"args": ["model=resnet20", "dataset=cifar10"]},
        "stride_warning": {"args": ["model.layers.2.maxpool2d.kernel_size=3"]},
        "alexnet": {"args": ["model=alexnet", "dataset=random", "dataset.input_shape=[3,227,227]"]},
        "linear_stack": {"args": ["model.layers.1=identity", "model.layers.2=identity"]},
        "full_error": {"args": ["model.layers.1=relux"], "env": {"HYDRA_FULL_ERROR": "1"}},
        "config_dir": {"args": ["--config-dir", str(root / "my"), "model=tiny"]},
    }
    for name, (overrides, _, _) in ERRORS.items():
        cases[f"error_{name}"] = {"args": overrides}
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    assert (BIN / "cnn-summary").exists(), f"console script cnn-summary not installed in {BIN}"
    root = tmp_path_factory.mktemp("cli")
    (root / "my" / "model").mkdir(parents=True)
    (root / "my" / "model" / "tiny.yaml").write_text(MY_MODEL)
    cases = _cases(root)
    cwds = {}
    for name in cases:
        cwds[name] = root / "cwd" / name
        cwds[name].mkdir(parents=True)
    procs = run_side_by_side({name: lambda name=name, case=case: Started(
        "cnn-summary", *case["args"], cwd=cwds[name], env=case.get("env"), fork=name not in SCRIPT)
        for name, case in cases.items()})
    return {name: (proc, cwds[name]) for name, proc in procs.items()}


def output_sizes(stdout: str) -> list[str]:
    """The Output Size column of the table, read by the header's column positions."""
    lines = stdout.splitlines()
    header = lines[0]
    start, end = header.index("Output Size"), header.index("RF")
    rows = [line for line in lines[2:] if line and not line.startswith("-")]
    sizes = []
    for line in rows:
        if line.startswith("Total params"):
            break
        sizes.append(line[start:end].strip())
    return sizes


def test_lenet5_table(runs):
    proc, cwd = runs["lenet5"]
    assert proc.returncode == 0, proc.stderr
    assert output_sizes(proc.stdout) == ["1 x 28 x 28", *LECTURE_SIZES]
    assert "Total params: 1,256,080 (1,256,080 trainable)" in proc.stdout
    assert "MACs per image: 6,522,000" in proc.stdout
    assert "Receptive field of the last spatial layer: 16 x 16" in proc.stdout
    for weight in ("20 x 1 x 5 x 5", "50 x 20 x 5 x 5", "2450 x 500", "500 x 10"):
        assert weight in proc.stdout
    assert proc.stderr == ""


def column(stdout: str, title: str, row: str) -> str:
    """One cell of the table: the column under `title` (read by the header's positions) of the row named `row`."""
    lines = stdout.splitlines()
    header = lines[0]
    start = header.index(title)
    end = start + len(title)
    while end < len(header) and header[end] == " ":  # a column runs to where the next title starts
        end += 1
    line = next(line for line in lines if line.split(" ", 1)[0] == row)
    return line[start:end].strip()


def test_alexnet_table_shows_receptive_field_and_memory(runs):
    proc, _ = runs["alexnet"]
    assert proc.returncode == 0, proc.stderr
    assert output_sizes(proc.stdout)[:2] == ["3 x 227 x 227", "96 x 55 x 55"]
    assert column(proc.stdout, "RF", "conv1") == "11x11"
    assert column(proc.stdout, "RF", "pool1") == "19x19"  # 11 + (3 - 1) x 4
    assert column(proc.stdout, "Memory KB", "conv1") == f"{96 * 55 * 55 * 4 / 1024:,.1f}"
    assert "Activation memory per image: " in proc.stdout and proc.stderr == ""


def test_two_convs_with_no_activation_warn_once_and_lenet5_does_not(runs):
    proc, _ = runs["linear_stack"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("warning: conv1 (5x5) and conv2 (5x5) compose into a single linear 9x9 convolution: "
                           "add an activation between them (e.g. relu)\n")
    assert runs["lenet5"][0].stderr == ""


def test_summary_writes_nothing_into_cwd(runs):
    for name in ("lenet5", "stride_warning", "error_unknown_layer", "config_dir"):
        proc, cwd = runs[name]
        assert list(cwd.iterdir()) == [], (name, list(cwd.iterdir()))


@pytest.mark.parametrize("name,params", [("vgg11_bn", "9,228,362"), ("resnet20", "272,474")])
def test_cifar_models(runs, name, params):
    proc, _ = runs[name]
    assert proc.returncode == 0, proc.stderr
    assert output_sizes(proc.stdout)[0] == "3 x 32 x 32"
    assert output_sizes(proc.stdout)[-1] == "10"
    assert f"Total params: {params} " in proc.stdout


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_is_one_line_with_the_fix(runs, name):
    proc, _ = runs[f"error_{name}"]
    _, position, fixes = ERRORS[name]
    line = one_error_line(proc)
    assert line[len("error: "):].startswith(position), line
    for fix in fixes:
        assert fix in line, (fix, line)
    assert proc.stdout == ""


def test_stride_not_dividing_warns(runs):
    proc, _ = runs["stride_warning"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines), proc.stderr
    assert any(line.startswith("warning: model.layers[2] (maxpool2d): ") and "ignored" in line for line in lines)
    assert "(28 - 3 + 0) / 2 + 1 is not a whole number; the last 1 input rows are ignored" in proc.stderr
    # 28 -> floor((28 - 3) / 2) + 1 = 13
    assert "20 x 13 x 13" in output_sizes(proc.stdout)


def test_hydra_full_error_shows_traceback(runs):
    proc, _ = runs["full_error"]
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "UserError" in proc.stderr and "did you mean 'relu'?" in proc.stderr


def test_users_own_model_config(runs):
    proc, _ = runs["config_dir"]
    assert proc.returncode == 0, proc.stderr
    assert "Linear (784 -> 10)" in proc.stdout
    assert "Total params: 7,850 " in proc.stdout  # 784 * 10 + 10
