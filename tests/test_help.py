"""`--help` of each command, as a person first meets it: what the command does, examples,
and the options it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Started, run_side_by_side

pytestmark = pytest.mark.e2e  # every test here starts cnn-train or friends

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TOOLS = ("cnn-train", "cnn-summary", "cnn-eval", "cnn-predict", "cnn-export")


@pytest.fixture(scope="module")
def help_text(tmp_path_factory) -> dict[str, str]:
    """Each command's --help: cnn-train's from the installed script, the others' from the
    same entry point in a forked process (helpers.Started: no seconds of torch start-up)."""
    cwd = tmp_path_factory.mktemp("help")
    procs = run_side_by_side({tool: lambda tool=tool: Started(tool, "--help", cwd=cwd, timeout=240,
                                                              fork=tool != "cnn-train") for tool in TOOLS})
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # asking for help writes nothing
    return {tool: proc.stdout for tool, proc in procs.items()}


@pytest.mark.parametrize("tool", TOOLS)
def test_help_starts_with_what_the_command_does_and_an_example(help_text: dict[str, str], tool: str) -> None:
    lines = help_text[tool].splitlines()
    assert lines[0].startswith(f"{tool}: ")
    assert any(line.strip().startswith(f"{tool} ") for line in lines[1:6])  # an example command
    assert "powered by Hydra" not in help_text[tool]


def test_train_help_lists_the_options_of_each_group(help_text: dict[str, str]) -> None:
    text = help_text["cnn-train"]
    shipped = ", ".join(sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
    assert "lenet5, lenet5_1998, lenet5_bn" in shipped and f"model: {shipped}\n" in text
    for group in ("optimizer", "scheduler"):  # the shipped configs and every other torch.optim class by name
        line = next(line for line in text.splitlines() if line.startswith(f"{group}: "))
        shipped = {p.stem for p in (CONFIGS / group).glob("*.yaml")}
        assert shipped <= set(line.removeprefix(f"{group}: ").split(", ")), line
    assert "radam" in text and "exponentiallr" in text
    assert "resume=outputs/NAME/DATE_TIME" in text and "--cfg job" in text
    assert "\ntrainer:\n  epochs: 3\n" in text  # the config it would run
    assert "debug: fast, overfit, profile" in text
    for tool in ("cnn-train", "cnn-summary"):  # only what a user chooses, not the types behind the YAML files
        assert not [line for line in help_text[tool].splitlines() if line.startswith("schema")], tool
    assert "\nmodel: " in help_text["cnn-summary"] and "\noptimizer: " not in help_text["cnn-summary"]
    assert "must match" not in help_text["cnn-predict"] and "dataset.resize" in help_text["cnn-predict"]


def test_eval_help_shows_its_own_keys_not_the_training_groups(help_text: dict[str, str]) -> None:
    text = help_text["cnn-eval"]
    assert "checkpoint: ???" in text and "split: test" in text
    assert "Configuration groups" not in text and "optimizer:" not in text


def test_predict_and_export_help_show_their_own_keys(help_text: dict[str, str]) -> None:
    assert "inputs: ???" in help_text["cnn-predict"] and "top_k: 1" in help_text["cnn-predict"]
    assert "format: onnx" in help_text["cnn-export"] and "fuse_bn: true" in help_text["cnn-export"]
    for tool in ("cnn-predict", "cnn-export"):
        assert "Configuration groups" not in help_text[tool] and "optimizer:" not in help_text[tool]


def test_summary_help_lists_every_layer_a_config_may_use(help_text: dict[str, str]) -> None:
    from cnn_cli.layers import CATALOGUE, COMPOSITES

    text = help_text["cnn-summary"]
    listed = text.split("Layers a model config may use", 1)[1].split("\n\n", 1)[0]
    words = {word.strip(",") for word in listed.split(":", 1)[1].split()}
    assert words == {*CATALOGUE, *COMPOSITES}
