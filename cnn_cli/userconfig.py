"""Config files from someone else are data: a config folder (`--config-dir DIR`) is read here, never by Hydra.

Hydra runs code named in its own settings (`hydra.callbacks`, logging handlers, launchers,
an Optuna `custom_search_space`) and `hydra.utils.instantiate` runs any `_target_`. A folder of
configs shared by a colleague or downloaded with a paper must reach neither, so it never
joins Hydra's search path: `--config-dir DIR` is taken off the command line, each
`DIR/GROUP/NAME.yaml` is read by our own bounded YAML reader, checked against what its group
may set, and stored in Hydra's ConfigStore as group GROUP, option NAME, in package GROUP.
`model=NAME` then chooses it as it chooses a shipped config. Hydra's own settings come only
from the command line typed: `hydra.searchpath=`, `--config-path`, `--config-name` and
`--experimental-rerun` are refused, and so are `DIR/hydra/` and `DIR/schema/`. A file's
`# @package` line is a comment to us (one naming another package is refused: it would mislead).

- `model/`, `dataset/`, `optimizer/`, `scheduler/`, `trainer/` files set only their group's node;
  `experiment/` files the training keys (and `hydra.sweeper.params`, the sweep they describe);
  `hparams_search/` files those and the sweeper's parameter space, trial counts and sampler seed,
  never where anything is stored (`storage`) nor the launcher: those stay the command line's.
- Values are plain YAML: no tag that builds an object, no `_target_`-style key, and of
  OmegaConf's interpolations only `${a.b}` to another training key. No resolver runs: `oc.env`
  would copy the environment (secrets) into a run's record and checkpoints that get shared,
  `oc.create` / `oc.decode` build nodes from strings no check sees, `hydra:` reads Hydra's
  settings. On the command line the user may still type any of them.
- Work is bounded before it is done: file size, nesting depth, and values after YAML aliases expand.
- A file with a shipped config's name is refused (the shipped one would win, silently), and so is
  one config in two folders.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import stat
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import grammar_parser
from omegaconf._utils import get_yaml_loader
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Grammar

from cnn_cli.errors import UserError
from cnn_cli.schema import TrainSchema

# what an experiment may set: the training config's keys, but resume (a run to continue is the user's own choice)
TRAINING_KEYS = tuple(f.name for f in fields(TrainSchema) if f.name != "resume")
OWN_PACKAGE_GROUPS = ("model", "dataset", "trainer", "optimizer", "scheduler")
RECIPE_GROUPS = ("experiment", "hparams_search")  # package _global_, re-rooted to the training keys
NOT_READ = ("hydra", "schema")  # would replace Hydra's own configs or our schemas
INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
# what a recipe may set under hydra.sweeper: the parameter space, and for a search its trial counts and sampler
SWEEPER_KEYS = {"experiment": ("params",),
                "hparams_search": ("params", "n_trials", "n_jobs", "direction", "study_name", "max_failure_rate",
                                   "sampler")}
SEARCH_PLUGINS = ("/hydra/sweeper", "/hydra/sweeper/sampler")  # what a search's defaults list may choose
MAX_FILE_BYTES = 1_000_000  # a model of 10,000 layers is about 300 kB of YAML
MAX_DEPTH = 100  # nested mappings and lists; the builder's own limit (blocks 20 deep) is about 62
MAX_VALUES = 200_000  # after aliases expand; a 10,000-layer model is about 50,000
MAX_FOLDER_BYTES = 20_000_000  # all of a folder's configs
MAX_INTERPOLATED_CHARS = 1_000  # ${dataset.num_classes} is 22
_CONFIG_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*", re.ASCII)
_PACKAGE_LINE = re.compile(r"^\s*#\s*@package\s+(\S*)", re.MULTILINE)
_NODE_INTERPOLATION = re.compile(r"^\$\{(\.*)([A-Za-z_][\w-]*)(\.[A-Za-z_][\w-]*)*\}$")


def take_config_dirs(argv: list[str]) -> list[str]:
    """Read the config folders the command line names and store their configs for Hydra;
    return the command line without them, after refusing every other way to reach Hydra's search path."""
    rest, folders = _split_config_dirs(argv)
    _check_command_line(rest)
    configs: dict[tuple[str, str], Any] = {}
    for folder in folders:
        for (group, name), content in load_config_dir(folder).items():
            if (group, name) in configs:
                raise UserError(f"{group}/{name}.yaml is in more than one --config-dir; keep one, or rename one")
            configs[group, name] = content
    store(configs)
    return rest


def _split_config_dirs(argv: list[str]) -> tuple[list[str], list[Path]]:
    """`--config-dir DIR`, `--config-dir=DIR`, `-cd DIR` and every abbreviation argparse accepts (`--config-d`)."""
    rest, folders, args = [], [], iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if arg == "--":
            rest += [arg, *args]
        elif flag == "-cd" or (len(flag) >= len("--config-d") and "--config-dir".startswith(flag)):
            folder = value if eq else next(args, None)
            if not folder:
                raise UserError(f"{flag}: give the folder of your configs, e.g. --config-dir my_configs")
            folders.append(Path(folder).expanduser())
        else:
            rest.append(arg)
    return rest, folders


def _check_command_line(argv: list[str]) -> None:
    """Hydra's own parser finds no other config folder, file or pickle in what is left."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # --version
            args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):  # Hydra reports its own usage errors
        return
    if args.config_dir is not None:  # a spelling _split_config_dirs does not know
        raise UserError(f"--config-dir {args.config_dir}: write the option out as --config-dir DIR")
    for flag, given in (("--config-path", args.config_path), ("--config-name", args.config_name)):
        if given is not None:
            raise UserError(f"{flag}: the tools' own config is fixed; put your configs in DIR/model/NAME.yaml, "
                            "DIR/experiment/NAME.yaml, ... and add them with --config-dir DIR")
    if args.experimental_rerun is not None:
        raise UserError("--experimental-rerun: a pickled config can run code when it is read; "
                        "to continue a run: cnn-train resume=RUN")
    for override in args.overrides:
        try:
            parsed = OverridesParser.create().parse_override(override)
        except Exception:  # noqa: BLE001  a syntax error: Hydra says where
            continue
        group, package = parsed.key_or_group, parsed.package or ""
        if group == "hydra" or group.startswith("hydra.searchpath"):
            raise UserError(f"{override.split('=', 1)[0]}: configs of your own are read by cnn-cli, not from "
                            "Hydra's search path; add them with --config-dir DIR")
        if package.split(".")[0] in ("hydra", "_global_"):
            raise UserError(f"{group}@{package}: a config stays in its own group; choose it with {group}=NAME")
        chosen = override.split("=", 1)[-1]
        if (group in _shipped_groups() or "/" in group) and ("/" in chosen or ".." in chosen):
            own = (f"; your own go in DIR/{group}/NAME.yaml, with --config-dir DIR"
                   if group in (*OWN_PACKAGE_GROUPS, *RECIPE_GROUPS) else " (cnn-train --help lists them)")
            raise UserError(f"{override}: choose the {group} config by its name{own}")


def load_config_dir(folder: Path) -> dict[tuple[str, str], Any]:
    """Every config of the folder's groups, read and checked: {(group, name): content}."""
    if not folder.is_dir():
        raise UserError(f"--config-dir {folder}: no such folder; give the folder holding model/, experiment/, ...")
    for name in NOT_READ:
        if (folder / name).exists():
            raise UserError(f"{folder / name}: a config folder may not hold {name}/ configs (they would replace "
                            f"{'Hydra' if name == 'hydra' else 'cnn-cli'}'s own; Hydra's settings come from the "
                            "command line); remove the folder")
    found: list[tuple[str, Path]] = []
    for group in (*OWN_PACKAGE_GROUPS, *RECIPE_GROUPS):
        if not (folder / group).is_dir():
            continue
        shipped = _shipped_names(group)
        for path in sorted((folder / group).iterdir()):
            if path.name.startswith("."):  # an editor's lock or swap file, not a config
                continue
            if not _CONFIG_NAME.fullmatch(path.name):
                raise UserError(f"{ascii(str(path))}: a config's name is letters, digits, _, - and .; rename it")
            if path.is_dir():
                raise UserError(f"{path}: configs of a group sit directly in {folder / group}; move them there")
            if path.suffix == ".yml":
                raise UserError(f"{path}: Hydra's config files end in .yaml; rename it {path.stem}.yaml")
            if path.suffix != ".yaml":
                continue
            if path.stem in shipped:
                raise UserError(f"{path}: cnn-cli ships a {group} config named {path.stem}, which would be chosen "
                                f"instead of yours; rename yours (e.g. my_{path.stem}.yaml) and choose "
                                f"{group}=my_{path.stem}")
            found.append((group, path))
    if sum(path.stat().st_size for _, path in found if path.exists()) > MAX_FOLDER_BYTES:
        raise UserError(f"{folder}: its configs hold more than {MAX_FOLDER_BYTES:,} bytes; is it the right folder?")
    return {(group, path.stem): read_config(path, group) for group, path in found}


def _shipped_groups() -> set[str]:
    """The config groups cnn-cli ships (model, ..., debug): a choice of one is a name, never a path."""
    return {f.name for f in resources.files("cnn_cli.configs").iterdir() if f.is_dir() and not f.name.startswith("_")}


def _shipped_names(group: str) -> set[str]:
    return {f.name.removesuffix(".yaml") for f in resources.files("cnn_cli.configs").joinpath(group).iterdir()
            if f.name.endswith(".yaml")}


def store(configs: dict[tuple[str, str], Any]) -> None:
    """Make each config an option of its group, in its group's package (recipes: the top, whose
    keys read_config limited to the training keys)."""
    for (group, name), content in configs.items():
        package = "_global_" if group in RECIPE_GROUPS else group
        try:
            ConfigStore.instance().store(group=group, name=name, node=content, package=package)
        except OmegaConfBaseException as err:  # e.g. a key OmegaConf does not take
            raise UserError(f"{group}/{name}.yaml: {str(err).splitlines()[0]}") from None


def read_config(path: Path, group: str) -> dict[str, Any]:
    """One config file of a group: read within bounds, parsed as plain YAML, checked against what the group may set."""
    text = _read_bounded(path)
    if group not in RECIPE_GROUPS:  # read as a comment, the line would mislead (Hydra never sees it)
        for package in _PACKAGE_LINE.findall(text):
            if package not in (group, "_group_"):
                raise UserError(f"{path}: '# @package {package}': a {group} config sets only {group}.*; remove "
                                "that line")
    content = parse_yaml(path, text) or {}
    if not isinstance(content, dict):
        raise UserError(f"{path}: a {group} config is a mapping of keys to values, not a {type(content).__name__}")
    body = {k: v for k, v in content.items() if k != "defaults"}
    if group in RECIPE_GROUPS:
        _check_recipe(path, group, body)
    _check_values(path, body, "" if group in RECIPE_GROUPS else group)
    check_defaults(path, group, content.get("defaults", []))
    return content


def _read_bounded(path: Path) -> str:
    """The file's text: a regular file (not a FIFO or a device, which never end), at most MAX_FILE_BYTES, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path}: not a regular file; a config is a YAML file")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{path}: larger than any config needs (limit {MAX_FILE_BYTES:,} bytes); is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None


def parse_yaml(path: Path, text: str) -> Any:
    """Plain YAML as OmegaConf reads it (duplicate keys refused), its nesting and alias
    expansion bounded before anything is built from it; a syntax error is one line."""
    try:
        _check_shape(path, yaml.parse(text, Loader=get_yaml_loader()))
        content = yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        tab = " (YAML indents with spaces, not tabs)" if "\t" in problem or "'\\t'" in problem else ""
        raise UserError(f"{path}:{where}: not valid YAML: {problem}{tab}") from None
    _count_values(path, content)
    return content


def _check_shape(path: Path, events: Any) -> None:
    """Nesting depth, from the parser's events (the parser keeps a stack; building the nodes recurses)."""
    depth = 0
    for event in events:
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{path}: line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} deep; "
                                "no config needs that")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _count_values(path: Path, content: Any) -> None:
    """How many values the content holds once YAML aliases (`*a`) are expanded, as OmegaConf
    would copy them: counted per shared node once, so a 'billion laughs' file costs no time."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise UserError(f"{path}: a YAML alias refers to a node that holds it; a config is a tree")
        open_nodes.add(id(node))
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise UserError(f"{path}: more than {MAX_VALUES:,} values once its YAML aliases (*name) are "
                                "expanded; no config needs that")
        sizes[id(node)] = total
        return total

    size(content)


def _check_recipe(path: Path, group: str, body: dict[str, Any]) -> None:
    """An experiment or search sets training keys, and under hydra.sweeper only what SWEEPER_KEYS allow."""
    for key in body:
        if key not in (*TRAINING_KEYS, "hydra"):
            raise UserError(f"{path}: key '{_cut(key)}': an {group} config may set only {', '.join(TRAINING_KEYS)} "
                            "(and hydra.sweeper.params)")
    hydra_node = body.get("hydra", {})
    allowed = SWEEPER_KEYS[group]
    if not isinstance(hydra_node, dict) or set(hydra_node) - {"sweeper"} or not isinstance(
            hydra_node.get("sweeper", {}), dict):
        raise UserError(f"{path}: key 'hydra': an {group} config may set only hydra.sweeper.{{{', '.join(allowed)}}}; "
                        "Hydra's other settings come from the command line")
    sweeper = hydra_node.get("sweeper", {})
    for key, value in sweeper.items():
        if key not in allowed:
            name = _cut(str(key))
            raise UserError(f"{path}: key 'hydra.sweeper.{name}': an {group} config may set only hydra.sweeper."
                            f"{{{', '.join(allowed)}}}; where a search is stored and how it is launched are the "
                            f"command line's (hydra.sweeper.{name}=...)")
        if key == "sampler" and not (isinstance(value, dict)
                                     and all(isinstance(v, (int, float, str, bool)) for v in value.values())):
            raise UserError(f"{path}: key 'hydra.sweeper.sampler': give only the sampler's settings, e.g. seed: 0")
    _check_params(path, sweeper.get("params", {}))


def _check_params(path: Path, params: Any) -> None:
    """A sweep's parameter space: training keys, each with its values in Hydra's sweep syntax."""
    if not isinstance(params, dict):
        raise UserError(f"{path}: key 'hydra.sweeper.params': a mapping of keys to sweep values, "
                        "e.g. optimizer.lr: interval(0.001, 0.1)")
    for key, value in params.items():
        root = re.split(r"[./]", str(key).lstrip("+~"), maxsplit=1)[0]
        if root not in TRAINING_KEYS or "@" in str(key):
            raise UserError(f"{path}: key 'hydra.sweeper.params.{_cut(str(key))}': a sweep varies only training keys "
                            f"({', '.join(TRAINING_KEYS)}), in their own place")
        if not isinstance(value, (str, int, float, bool)) or "$" in str(value):
            raise UserError(f"{path}: key 'hydra.sweeper.params.{_cut(str(key))}': sweep values are plain text like "
                            "'choice(64, 128)' or 'interval(0.001, 0.1)', without interpolations")


def _check_values(path: Path, node: Any, key: str) -> None:
    """Plain values only: no key that makes Hydra build an object, no interpolation but `${a.b}`."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_values(path, item, f"{key}[{i}]")
    elif isinstance(node, dict):
        for name, value in node.items():
            full = f"{key}.{name}" if key else str(name)
            if not isinstance(name, (str, int)):
                raise UserError(f"{path}: key '{_cut(full)}': keys are names or numbers")
            if name in INSTANTIATE_KEYS:
                raise UserError(f"{path}: key '{_cut(full)}': a config from a file may not name Python code to run (an "
                                "optimizer or scheduler names its torch.optim class with name: SGD, name: StepLR)")
            if isinstance(name, str) and "$" in name:
                raise UserError(f"{path}: key '{_cut(full)}': a key may not hold an interpolation")
            _check_values(path, value, full)
    elif isinstance(node, str):
        _check_interpolations(path, key, node)
    elif not isinstance(node, (int, float, bool, type(None))):
        raise UserError(f"{path}: key '{_cut(key)}': a {type(node).__name__} is not a config value; use text, "
                        "a number, true/false, a list or a mapping")


def _check_interpolations(path: Path, key: str, text: str) -> None:
    """Only `${a.b}` (or `${.b}`) to a training key: a resolver (`${oc.env:...}`, `${oc.create:...}`,
    `${hydra:...}`, ...) would run at compose time on what the file says."""
    if "$" not in text:
        return
    where = f"{path}: key '{_cut(key)}': '{_cut(text)}'"
    if len(text) > MAX_INTERPOLATED_CHARS:  # parsing it would take seconds
        raise UserError(f"{where}: text with an interpolation is at most {MAX_INTERPOLATED_CHARS:,} characters")
    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        raise UserError(f"{where} is not a valid interpolation; write ${{group.key}}") from None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Grammar.InterpolationResolverContext):
            raise UserError(f"{where} calls the resolver '{_cut(node.resolverName().getText())}'; "
                            "a config from a file may use only ${group.key} interpolations (type resolvers such as "
                            "${oc.env:X} on the command line)")
        if isinstance(node, Grammar.InterpolationNodeContext):
            if _interpolation_root(key, node.getText()) not in TRAINING_KEYS:
                raise UserError(f"{where}: a config from a file may refer only to the "
                                f"training keys ({', '.join(TRAINING_KEYS)}), e.g. ${{dataset.num_classes}}")
        if getattr(node, "symbol", None) is not None and node.symbol.type == Grammar.ESC_INTER:
            raise UserError(f"{where}: an escaped interpolation (\\${{...}}) would become "
                            "one later; a config from a file may use only ${group.key}")
        stack.extend(getattr(node, "children", None) or [])


def _interpolation_root(key: str, text: str) -> str | None:
    """The top-level key `${a.b}` or, from the value at `key`, `${..b}` refers to; None for anything else."""
    found = _NODE_INTERPOLATION.match(text)
    if not found:
        return None
    container = re.findall(r"[^.\[\]]+", key)[:-1]
    up = len(found.group(1)) - 1  # `.` is the value's own mapping, each further `.` its parent
    return container[0] if found.group(1) and up < len(container) else found.group(2)


def _cut(text: str, limit: int = 80) -> str:
    """A name or value from the file, short enough for a one-line message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_defaults(path: Path, group: str, defaults: Any) -> None:
    """Entries may choose configs of the training groups (and, for a search, the sweeper and its sampler),
    or the schema of their own group: never place one in another package."""
    if not isinstance(defaults, list):
        raise UserError(f"{path}: 'defaults' must be a list")
    for entry in defaults:
        if entry == "_self_":
            continue
        if isinstance(entry, str):
            target, choice = entry, None
        elif isinstance(entry, dict) and len(entry) == 1:
            target, choice = str(next(iter(entry))), next(iter(entry.values()))
        else:
            raise UserError(f"{path}: defaults entry {_cut(repr(entry))}: expected a config name or one "
                            "'group: option'")
        target = re.sub(r"^(override|optional)\s+", "", target.strip())
        if _allowed_default(group, target, choice):
            continue
        raise UserError(f"{path}: defaults entry '{_cut(target)}' reaches outside {group}; a {group} config may choose "
                        f"only {_what_defaults_may_choose(group)}")


def _allowed_default(group: str, target: str, choice: Any) -> bool:
    """Names only: no `..` that could lead Hydra to a file outside its config folders."""
    if choice is None:  # its group's schema, or another config of the same group, checked in its own right
        return bool(re.fullmatch(rf"/schema/{group}(/[\w-]+)?@_here_|[\w-]+", target))
    if not (isinstance(choice, str) and re.fullmatch(r"[\w-]+", choice)):  # one option, by its name
        return False
    if group in RECIPE_GROUPS:
        allowed = [f"/{g}" for g in OWN_PACKAGE_GROUPS]
        if group == "hparams_search":
            allowed += SEARCH_PLUGINS
        return target in allowed
    return False


def _what_defaults_may_choose(group: str) -> str:
    if group in RECIPE_GROUPS:
        extra = ", /hydra/sweeper, /hydra/sweeper/sampler" if group == "hparams_search" else ""
        return f"/model, /dataset, /trainer, /optimizer, /scheduler{extra}, each by one option's name"
    return f"other {group} configs and its /schema/{group}/...@_here_"
