"""README cannot drift: every fenced block is tagged with what it is, each `sh` block's commands
run and succeed, and each `console` transcript prints what README shows. Blocks that need data,
minutes, a GPU or a cluster say so in their tag (```sh needs-data) and are only checked for it.
Also the help that tells the truth: AlexNet's input is hinted at."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from cnn_cli.builder import build_from_config
from cnn_cli.cli import register
from cnn_cli.errors import UserError
from helpers import NO_GPU, ONE_THREAD, cnn

README = Path(__file__).resolve().parent.parent / "README.md"
TAGS = {"sh", "console", "text", "yaml", "python", "sh needs-data", "sh needs-minutes", "sh needs-gpu",
        "bash needs-cluster"}


def blocks() -> list[tuple[int, str, list[str]]]:
    """(line number, info string, lines) of every fenced block."""
    found, current = [], None
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if current is None:
                current = (number, line[3:].strip(), [])
            else:
                found.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"README.md:{current[0]}: a block is never closed"
    return found


def commands(kind: str) -> list[tuple[int, str, list[str]]]:
    """(line, command, what it prints) for each command of the blocks tagged `kind`."""
    found = []
    for number, info, lines in blocks():
        if info != kind:
            continue
        for offset, line in enumerate(lines, start=1):
            if kind == "sh" and line.strip():
                found.append((number + offset, line.split("  #")[0].strip(), []))
            elif kind == "console" and line.startswith("$ "):
                found.append((number + offset, line[2:], []))
            elif kind == "console":
                found[-1][2].append(line)
    return found


def test_every_block_says_what_it_is() -> None:
    untagged = [f"README.md:{number}: ```{info}" for number, info, _ in blocks() if info not in TAGS]
    assert not untagged, f"tag each block with one of {sorted(TAGS)}: {untagged}"
    assert commands("sh") and commands("console")


@pytest.mark.e2e
@pytest.mark.parametrize("line, command, _", commands("sh"), ids=lambda v: str(v) if isinstance(v, int) else None)
def test_each_sh_command_runs(line: int, command: str, _: list[str], tmp_path: Path) -> None:
    tool, *args = shlex.split(command)
    assert tool.startswith("cnn-"), f"README.md:{line}: only cnn-* commands can run here; tag the block"
    cnn(tool, *args, cwd=tmp_path, env={**ONE_THREAD, **NO_GPU}, timeout=240)


@pytest.mark.e2e
@pytest.mark.parametrize("line, command, shown", commands("console"), ids=lambda v: str(v) if isinstance(v, int)
                         else None)
def test_each_console_transcript_prints_what_readme_shows(line: int, command: str, shown: list[str],
                                                          tmp_path: Path) -> None:
    tool, *args = shlex.split(command)
    proc = cnn(tool, *args, cwd=tmp_path, env={**ONE_THREAD, **NO_GPU}, check=False, timeout=240)
    printed = [re.sub(r"\s+$", "", text) for text in (proc.stdout + proc.stderr).splitlines()]
    assert printed == shown, f"README.md:{line}: {command}"


def test_alexnet_on_mnist_hints_at_the_input_it_was_published_for() -> None:
    register()
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        cfg = compose("summary", overrides=["model=alexnet"])
        fits = compose("summary", overrides=["model=alexnet", "dataset=random", "dataset.input_shape=[3,227,227]"])
    with pytest.raises(UserError) as err:
        build_from_config(cfg)
    assert str(err.value).endswith("The model 'alexnet' is made for 3 x 227 x 227 samples, not 1 x 28 x 28 (mnist): "
                                   "try model=alexnet dataset=random dataset.input_shape=[3,227,227]")
    fits.dataset.num_classes = 1000
    assert build_from_config(fits).output_shape == (1000,)
