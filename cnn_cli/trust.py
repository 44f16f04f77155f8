"""Config files from someone else are data: what a config folder given with --config-dir may set.

Hydra runs code named in its own settings (`hydra.callbacks`, logging handlers, launchers)
and `hydra.utils.instantiate` runs any `_target_`. A folder of configs shared by a colleague
or downloaded with a paper must not be able to reach either, so every YAML file in its
group folders is read (as plain YAML, nothing resolved) and checked before Hydra composes anything:

- `model/`, `dataset/`, `trainer/`, `optimizer/`, `scheduler/` files (and those of any other group
  the command line names, `+foo=bar`) set only their own group's keys; `experiment/` files only
  the training keys (model, dataset, ..., seed);
  `hparams_search/` files those and `hydra.sweeper` / `hydra.launcher` settings;
- no `_target_`-style key (an optimizer or scheduler names its torch.optim class: `name: SGD`);
- a defaults list names configs of these groups (and the sweeper/launcher plugins), no
  other package; no file under `hydra/` or `schema/` (they would shadow Hydra's or ours).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf._utils import get_yaml_loader

from cnn_cli.errors import UserError
from cnn_cli.schema import TrainSchema

# what an experiment may set: the training config's keys, but resume (a run to continue is the user's own choice)
TRAINING_KEYS = tuple(f.name for f in fields(TrainSchema) if f.name != "resume")
OWN_PACKAGE_GROUPS = ("model", "dataset", "trainer", "optimizer", "scheduler")
GLOBAL_GROUPS = ("experiment", "hparams_search")
SHADOWING = ("hydra", "schema")  # folders that would replace Hydra's own configs or our schemas
INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
SWEEP_PLUGINS = ("hydra/sweeper", "hydra/sweeper/sampler", "hydra/launcher")
MAX_FILE_BYTES = 1_000_000  # a model of 10,000 layers is about 300 kB of YAML
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)")


def check_command_line(argv: list[str]) -> None:
    """Check the config folders the command line adds, before Hydra reads any of them."""
    for flag in ("--config-path", "-cp", "--config-name", "-cn"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
            raise UserError(f"{flag}: the tools' own config is fixed; put your configs in DIR/model/NAME.yaml, "
                            "DIR/experiment/NAME.yaml, ... and add them with --config-dir DIR")
    groups = {*OWN_PACKAGE_GROUPS, *GLOBAL_GROUPS, *SHADOWING, *_named_groups(argv)}
    for folder in _config_dirs(argv):  # a missing folder is Hydra's to report
        for group in sorted(groups):  # the folders Hydra can read configs from (not e.g. a .venv beside them)
            for path in sorted((folder / group).rglob("*")) if (folder / group).is_dir() else []:
                if path.suffix in (".yaml", ".yml") and path.is_file():
                    check_file(path, path.relative_to(folder))


def _named_groups(argv: list[str]) -> set[str]:
    """The config groups a command line chooses from (`+foo=bar` reads DIR/foo/bar.yaml)."""
    chosen = (arg.lstrip("+~").split("=", 1)[0] for arg in argv if "=" in arg and not arg.startswith("-"))
    return {key.split("/", 1)[0].split("@", 1)[0] for key in chosen if "." not in key.split("/", 1)[0]}


def _config_dirs(argv: list[str]) -> list[Path]:
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(arg.split("=", 1)[1])
        elif arg.startswith("hydra.searchpath="):
            dirs += [p.removeprefix("file://") for p in re.split(r"[\[\],\s]+", arg.split("=", 1)[1])
                     if p.startswith("file://")]
    return [Path(d).expanduser() for d in dirs]


def check_file(path: Path, rel: Path) -> None:
    """One YAML file of a user's config folder: parses, and sets only what its group may."""
    group = rel.parts[0] if len(rel.parts) > 1 else ""
    if group in SHADOWING:
        raise UserError(f"{path}: a config folder may not hold {group}/ configs (they would replace "
                        f"{'Hydra' if group == 'hydra' else 'cnn-cli'}'s own); remove the file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes is larger than any config needs "
                        f"(limit {MAX_FILE_BYTES:,}); is it the right file?")
    text = _read(path)
    content = _parse(path, text) or {}
    if not isinstance(content, dict):
        raise UserError(f"{path}: a {group} config is a mapping of keys to values, not a {type(content).__name__}")
    package = _package(text)
    if group not in GLOBAL_GROUPS:  # ours, or another group the command line names
        if package not in (None, "_group_", group):
            raise UserError(f"{path}: '# @package {package}': a {group} config may set only {group}.*; "
                            "remove that line")
        root = {group: {k: v for k, v in content.items() if k != "defaults"}}
    else:
        if package != "_global_":
            raise UserError(f"{path}: an {group} config starts with '# @package _global_' and sets training keys "
                            f"({', '.join(TRAINING_KEYS)})")
        root = {k: v for k, v in content.items() if k != "defaults"}
        allowed = TRAINING_KEYS + (("hydra",) if group == "hparams_search" else ())
        for key in root:
            if key not in allowed:
                raise UserError(f"{path}: key '{key}': an {group} config may set only {', '.join(allowed)}")
        for key in (root.get("hydra") or {}):
            if key not in ("sweeper", "launcher"):
                raise UserError(f"{path}: key 'hydra.{key}': a search config may set only hydra.sweeper and "
                                "hydra.launcher")
    _no_instantiation(path, root, "")
    _check_defaults(path, group, content.get("defaults") or [])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None


def _parse(path: Path, text: str) -> Any:
    """Plain YAML as OmegaConf reads it (duplicate keys refused), so a syntax error is one line."""
    try:
        return yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        tab = " (YAML indents with spaces, not tabs)" if "\t" in problem or "'\\t'" in problem else ""
        raise UserError(f"{path}:{where}: not valid YAML: {problem}{tab}") from None


def _package(text: str) -> str | None:
    """The '# @package' line of the file's leading comments, as Hydra reads it."""
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("#"):
            return None
        found = _PACKAGE.match(line.strip())
        if found:
            return found.group(1)
    return None


def _no_instantiation(path: Path, node: Any, key: str) -> None:
    """No key that makes Hydra build an object (optimizers and schedulers are named, not imported)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _no_instantiation(path, item, f"{key}[{i}]")
    if not isinstance(node, dict):
        return
    for name, value in node.items():
        full = f"{key}.{name}" if key else str(name)
        if name in INSTANTIATE_KEYS:
            raise UserError(f"{path}: key '{full}': a config from a file may not name Python code to run (an "
                            "optimizer or scheduler names its torch.optim class with name: SGD, name: StepLR)")
        _no_instantiation(path, value, full)


def _check_defaults(path: Path, group: str, defaults: Any) -> None:
    """Entries may choose configs of the training groups (and, for a search, the sweeper and
    launcher plugins), or the schema of their own group: never place one in another package."""
    if not isinstance(defaults, list):
        raise UserError(f"{path}: 'defaults' must be a list")
    for entry in defaults:
        if entry == "_self_":
            continue
        if isinstance(entry, str):
            target = entry
        elif isinstance(entry, dict) and len(entry) == 1:
            target = str(next(iter(entry)))
        else:
            raise UserError(f"{path}: defaults entry {entry!r}: expected a config name or one 'group: option'")
        target = re.sub(r"^(override|optional)\s+", "", target.strip())
        if _allowed_default(group, target, isinstance(entry, str)):
            continue
        raise UserError(f"{path}: defaults entry '{target}' reaches outside {group}; a {group} config may choose "
                        f"only {_what_defaults_may_choose(group)}")


def _allowed_default(group: str, target: str, plain: bool) -> bool:
    if target.startswith("/schema/") and target.endswith("@_here_") and "/" + group + "/" in target + "/":
        return "@" not in target[: -len("@_here_")]
    if "@" in target:
        return False
    if plain:  # another config of the same group, checked in its own right
        return "/" not in target
    if group in GLOBAL_GROUPS:
        allowed = [f"/{g}" for g in OWN_PACKAGE_GROUPS]
        if group == "hparams_search":
            allowed += [f"/{p}" for p in SWEEP_PLUGINS]
        return target in allowed
    return False


def _what_defaults_may_choose(group: str) -> str:
    if group in GLOBAL_GROUPS:
        extra = ", /hydra/sweeper, /hydra/sweeper/sampler, /hydra/launcher" if group == "hparams_search" else ""
        return f"/model, /dataset, /trainer, /optimizer, /scheduler{extra}"
    return f"other {group} configs and its /schema/{group}/...@_here_"
