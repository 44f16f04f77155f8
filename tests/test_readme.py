"""The documentation cannot drift: in README.md, CONTRIBUTING.md and every docs/*.md page, every
fenced block is tagged with what it is, each `sh` block's commands run and succeed, each `console`
transcript prints what the page shows, and every relative link names a file that exists. Blocks
that need data, minutes, a GPU or a cluster say so in their tag (```sh needs-data) and are only
checked for it. Also the help that tells the truth: AlexNet's input is hinted at."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cnn_cli.builder import build_from_config
from cnn_cli.errors import UserError
from helpers import NO_GPU, ONE_THREAD, Started, cnn, compose

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
TAGS = {"sh", "console", "text", "yaml", "python", "sh needs-data", "sh needs-minutes", "sh needs-gpu",
        "bash needs-cluster"}


def blocks() -> list[tuple[str, str, list[str]]]:
    """(page:line, info string, lines) of every fenced block of every page."""
    found = []
    for page in PAGES:
        name, current = page.relative_to(ROOT).as_posix(), None
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("```"):
                if current is None:
                    current = (number, line[3:].strip(), [])
                else:
                    found.append((f"{name}:{current[0]}", current[1], current[2]))
                    current = None
            elif current is not None:
                current[2].append(line)
        assert current is None, f"{name}:{current[0]}: a block is never closed"
    return found


def commands(kind: str) -> list[tuple[str, str, list[str]]]:
    """(page:line, command, what it prints) for each command of the blocks tagged `kind`."""
    found = []
    for where, info, lines in blocks():
        if info != kind:
            continue
        page, number = where.rsplit(":", 1)
        for offset, line in enumerate(lines, start=1):
            if kind == "sh" and line.strip():
                found.append((f"{page}:{int(number) + offset}", line.split("  #")[0].strip(), []))
            elif kind == "console" and line.startswith("$ "):
                found.append((f"{page}:{int(number) + offset}", line[2:], []))
            elif kind == "console":
                found[-1][2].append(line)
    return found


def test_every_block_says_what_it_is() -> None:
    untagged = [f"{where}: ```{info}" for where, info, _ in blocks() if info not in TAGS]
    assert not untagged, f"tag each block with one of {sorted(TAGS)}: {untagged}"
    assert commands("sh") and commands("console")


def test_every_relative_link_names_a_file_that_exists() -> None:
    links = [(page, target) for page in PAGES
             for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text())
             if "://" not in target]
    broken = [f"{page.relative_to(ROOT)}: {target}" for page, target in links if not (page.parent / target).exists()]
    assert links and not broken, f"links to files that do not exist: {broken}"
    readme = (ROOT / "README.md").read_text()
    unlinked = [name for name in (page.relative_to(ROOT).as_posix() for page in PAGES[1:]) if name not in readme]
    assert not unlinked, f"README links to every page; it does not name {unlinked}"


@pytest.mark.e2e
@pytest.mark.parametrize("where, command, _", commands("sh"), ids=lambda v: v if ".md:" in str(v) else None)
def test_each_sh_command_runs(where: str, command: str, _: list[str], tmp_path: Path) -> None:
    tool, *args = shlex.split(command)
    assert tool.startswith("cnn-"), f"{where}: only cnn-* commands can run here; tag the block"
    cnn(tool, *args, cwd=tmp_path, env={**ONE_THREAD, **NO_GPU}, timeout=240)


@pytest.mark.e2e
@pytest.mark.parametrize("where, command, shown", commands("console"), ids=lambda v: v if ".md:" in str(v) else None)
def test_each_console_transcript_prints_what_the_page_shows(where: str, command: str, shown: list[str],
                                                            tmp_path: Path) -> None:
    tool, *args = shlex.split(command)  # the entry point in a forked process (helpers.Started); sh blocks run scripts
    proc = Started(tool, *args, cwd=tmp_path, env={**ONE_THREAD, **NO_GPU}, timeout=240).result()
    printed = [re.sub(r"\s+$", "", text) for text in (proc.stdout + proc.stderr).splitlines()]
    assert printed == shown, f"{where}: {command}"


def test_alexnet_on_mnist_hints_at_the_input_it_was_published_for() -> None:
    cfg = compose("summary", "model=alexnet")
    fits = compose("summary", "model=alexnet", "dataset=random", "dataset.input_shape=[3,227,227]")
    with pytest.raises(UserError) as err:
        build_from_config(cfg)
    assert str(err.value).endswith("The model 'alexnet' is made for 3 x 227 x 227 samples, not 1 x 28 x 28 (mnist): "
                                   "try model=alexnet dataset=random dataset.input_shape=[3,227,227]")
    fits.dataset.num_classes = 1000
    assert build_from_config(fits).output_shape == (1000,)
