"""A config folder from someone else is data (cnn_cli/userconfig.py): every route a file could take to
Hydra's own settings, a resolver, code or unbounded work is refused, in process; legitimate configs of
one's own still compose as before. The command-line contract (exit 2, one line, nothing written) is
in test_bad_input.py's catalogue."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from cnn_cli import userconfig
from cnn_cli.cli import register
from cnn_cli.errors import UserError
from helpers import compose

# the Hydra settings a config file could use to run code or write files
GUARDED = ("callbacks", "job_logging", "hydra_logging", "sweeper", "launcher", "searchpath", "run", "sweep",
           "output_subdir", "job", "help", "verbose", "env")


@pytest.fixture(autouse=True)
def config_store_as_it_was():
    """The configs a test stores in Hydra's ConfigStore leave with it: the store is process-wide,
    and a later test's command, forked from this process, would list them as its own."""
    register()  # what every command stores first (once a process) stays
    repo = ConfigStore.instance().repo
    groups = userconfig._shipped_groups() - {"hydra"}  # where a config folder's files go
    before = {group: set(repo.get(group, {})) for group in groups}
    yield
    for group, names in before.items():
        for name in set(repo.get(group, {})) - names:
            del repo[group][name]


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def load(root: Path, files: dict[str, str | bytes], *args: str) -> list[str]:
    """The command line `--config-dir root ARGS` after the folder's configs are read and stored."""
    write(root, files)
    return userconfig.take_config_dirs(["--config-dir", str(root), *args])


def hydra_settings(*overrides: str, multirun: bool = False):
    cfg = compose("train", *overrides, hydra=True)
    node = OmegaConf.to_container(cfg.hydra)
    return cfg, {key: node.get(key) for key in GUARDED if key != "job"}


def refused(root: Path, files: dict[str, str | bytes], *expect: str, args: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as err:
        load(root, files, *args)
    message = str(err.value)
    assert "\n" not in message
    for part in expect:
        assert part in message, (part, message)
    return message


# ------------------------------------------------------------------------- legitimate use

MY_MODEL = "name: mine\nlayers:\n  - flatten\n  - linear: {out_features: \"${dataset.num_classes}\"}\n"


def test_own_model_experiment_and_search_compose_as_shipped_ones_do(tmp_path):
    rest = load(tmp_path, {
        "model/uc_mine.yaml": MY_MODEL,
        "experiment/uc_recipe.yaml": ("# @package _global_\ndefaults:\n  - override /model: uc_mine\n"
                                      "  - override /dataset: mnist_sample\n  - override /optimizer: adamw\n"
                                      "optimizer:\n  lr: 0.003\ntrainer:\n  epochs: 2\n"
                                      "hydra:\n  sweeper:\n    params:\n      optimizer.lr: 0.01,0.1\n"),
        "hparams_search/uc_search.yaml": ("# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
                                          "  - override /hydra/sweeper/sampler: tpe\nhydra:\n  sweeper:\n"
                                          "    sampler: {seed: 3}\n    direction: maximize\n    n_trials: 4\n"
                                          "    params:\n      trainer.batch_size: choice(64, 128)\n"),
        "optimizer/uc_fast.yaml": "defaults:\n  - /schema/optimizer/SGD@_here_\n  - _self_\nname: SGD\nlr: 0.5\n",
        "model/README.md": "notes beside the configs are not configs\n",
    }, "experiment=uc_recipe", "trainer.epochs=3")
    assert rest == ["experiment=uc_recipe", "trainer.epochs=3"]
    cfg, _ = hydra_settings(*rest, "hparams_search=uc_search")
    assert cfg.model.name == "mine" and cfg.dataset.name == "mnist_sample" and cfg.optimizer.name == "AdamW"
    assert cfg.optimizer.lr == 0.003 and cfg.trainer.epochs == 3  # the command line still wins
    assert cfg.model.layers[1].linear.out_features == 10
    sweeper = cfg.hydra.sweeper
    assert sweeper.n_trials == 4 and sweeper.sampler.seed == 3 and sweeper.storage is None
    assert dict(sweeper.params) == {"optimizer.lr": "0.01,0.1", "trainer.batch_size": "choice(64, 128)"}
    assert hydra_settings("optimizer=uc_fast")[0].optimizer.lr == 0.5


def test_every_spelling_of_the_folder_option_is_read_by_us(tmp_path):
    for i, spelling in enumerate((["--config-dir", "{}"], ["--config-dir={}"], ["--config-di", "{}"],
                                  ["--config-d={}"], ["-cd", "{}"], ["-cd={}"])):
        folder = write(tmp_path / str(i), {f"model/uc_spelt{i}.yaml": MY_MODEL})
        rest = userconfig.take_config_dirs([arg.format(folder) for arg in spelling] + [f"model=uc_spelt{i}"])
        assert rest == [f"model=uc_spelt{i}"]
        assert ConfigStore.instance().load(f"model/uc_spelt{i}.yaml").package == "model"


def test_a_file_with_a_shipped_name_is_refused_with_the_way_out(tmp_path):
    refused(tmp_path, {"model/lenet5.yaml": MY_MODEL}, "model/lenet5.yaml", "ships a model config named lenet5",
            "would be chosen instead of yours", "model=my_lenet5")
    refused(tmp_path / "b", {"experiment/smoke.yaml": "trainer: {epochs: 1}\n"}, "experiment=my_smoke")


# ------------------------------------------------------------------------- Hydra's settings are unreachable

HOSTILE_LOGGING = ("hydra:\n  job_logging:\n    handlers:\n      file:\n        class: logging.FileHandler\n"
                   "        filename: victim.txt\n        mode: w\n")
CALLBACK = "hydra:\n  callbacks:\n    wipe: {_target_: builtins.open, file: victim.txt, mode: w}\n"

REFUSED = {  # name: (files, what the one line says)
    "two_package_headers": ({"model/uc_a.yaml": "# @package model\n# @package _global_\n" + HOSTILE_LOGGING},
                            ("uc_a.yaml", "'# @package _global_'", "sets only model.*")),
    "package_header_after_content": ({"model/uc_a.yaml": "name: x\n# @package _global_\n"},
                                     ("'# @package _global_'",)),
    "package_hydra_header": ({"dataset/uc_a.yaml": "# @package hydra.job_logging\nversion: 1\n"},
                             ("'# @package hydra.job_logging'",)),
    "oc_create_callback": ({"experiment/uc_a.yaml": "hydra:\n  callbacks: \"${oc.create:'{wipe: {_target_: "
                            "builtins.open, file: victim.txt, mode: w}}'}\"\n"}, ("key 'hydra'", "hydra.sweeper")),
    "oc_create_in_a_model": ({"model/uc_a.yaml": "name: x\nlayers: \"${oc.create:'[relu]'}\"\n"},
                             ("model.layers", "calls the resolver 'oc.create'", "only ${group.key}")),
    "oc_decode": ({"model/uc_a.yaml": "name: \"${oc.decode:'{a: 1}'}\"\n"}, ("resolver 'oc.decode'",)),
    "oc_env": ({"trainer/uc_a.yaml": "epochs: ${oc.env:HOME}\n"}, ("trainer.epochs", "resolver 'oc.env'",
                                                                  "on the command line")),
    "oc_select_hydra": ({"model/uc_a.yaml": "name: ${oc.select:hydra.run.dir,x}\n"}, ("resolver 'oc.select'",)),
    "hydra_resolver": ({"model/uc_a.yaml": "name: ${hydra:runtime.cwd}\n"}, ("resolver 'hydra'",)),
    "our_own_resolver": ({"model/uc_a.yaml": "name: ${cnn_log_file:victim.txt}\n"}, ("resolver 'cnn_log_file'",)),
    "resolver_inside_text": ({"model/uc_a.yaml": "name: net-${oc.env:USER}-1\n"}, ("resolver 'oc.env'",)),
    "nested_interpolation_key": ({"model/uc_a.yaml": "name: ${${oc.env:K}}\n"}, ("uc_a.yaml",)),
    "node_interpolation_to_hydra": ({"model/uc_a.yaml": "name: ${hydra.job.name}\n"},
                                    ("may refer only to the training keys",)),
    "relative_climb_to_hydra": ({"model/uc_a.yaml": "name: ${..hydra.job.name}\n"},
                                ("may refer only to the training keys",)),
    "escaped_interpolation": ({"model/uc_a.yaml": "name: \\${oc.env:SECRET}\n"}, ("escaped interpolation",)),
    "broken_interpolation": ({"model/uc_a.yaml": "name: \"${oc.env:\"\n"}, ("not a valid interpolation",)),
    "experiment_sets_callbacks": ({"experiment/uc_a.yaml": "# @package _global_\n" + CALLBACK},
                                  ("key 'hydra'", "Hydra's other settings come from the command line")),
    "experiment_sets_job_logging": ({"experiment/uc_a.yaml": HOSTILE_LOGGING}, ("key 'hydra'",)),
    "experiment_dotted_hydra_key": ({"experiment/uc_a.yaml": "hydra.job_logging: {version: 1}\n"},
                                    ("key 'hydra.job_logging'",)),
    "experiment_dotted_sweeper_key": ({"experiment/uc_a.yaml": "hydra: {sweeper.storage: x}\n"}, ("key 'hydra'",)),
    "experiment_sets_hydra_as_a_list": ({"experiment/uc_a.yaml": "hydra: [1]\n"}, ("key 'hydra'",)),
    "experiment_sets_resume": ({"experiment/uc_a.yaml": "resume: somewhere\n"}, ("key 'resume'",)),
    "experiment_sets_other_top_key": ({"experiment/uc_a.yaml": "foo: 1\n"}, ("key 'foo'",)),
    "experiment_search_storage": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    n_trials: 3\n"},
                                  ("hydra.sweeper.n_trials",)),
    "search_storage_outside": ({"hparams_search/uc_a.yaml": "hydra:\n  sweeper:\n    storage: sqlite:////tmp/x.db\n"},
                               ("hydra.sweeper.storage", "command line's")),
    "search_custom_search_space": ({"hparams_search/uc_a.yaml": "hydra:\n  sweeper:\n    custom_search_space: "
                                    "os.system\n"}, ("hydra.sweeper.custom_search_space",)),
    "search_sets_launcher_folder": ({"hparams_search/uc_a.yaml": "hydra:\n  launcher:\n    submitit_folder: /tmp/x\n"},
                                    ("key 'hydra'",)),
    "search_sampler_target": ({"hparams_search/uc_a.yaml": "hydra:\n  sweeper:\n    sampler:\n"
                                                           "      _target_: os.system\n"},
                              ("hydra.sweeper.sampler._target_", "may not name Python code")),
    "search_sampler_nested": ({"hparams_search/uc_a.yaml": "hydra:\n  sweeper:\n    sampler: {a: {b: 1}}\n"},
                              ("hydra.sweeper.sampler",)),
    "params_set_hydra_key": ({"hparams_search/uc_a.yaml": "hydra:\n  sweeper:\n    params:\n      "
                              "hydra.job_logging.handlers.file.filename: victim.txt\n"},
                             ("hydra.sweeper.params.hydra.job_logging", "only training keys")),
    "params_choose_hydra_group": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    params:\n      "
                                   "hydra/launcher: submitit_local\n"}, ("params.hydra/launcher",)),
    "params_added_hydra_key": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    params:\n      "
                                "+hydra.callbacks.x: a\n"}, ("params.+hydra.callbacks.x",)),
    "params_package_into_hydra": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    params:\n      "
                                   "model@hydra.job_logging: lenet5\n"}, ("in their own place",)),
    "params_value_interpolation": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    params:\n      "
                                    "optimizer.lr: \\${oc.env:LR}\n"}, ("without interpolations",)),
    "params_not_a_mapping": ({"experiment/uc_a.yaml": "hydra:\n  sweeper:\n    params: [1]\n"},
                             ("a mapping of keys to sweep values",)),
    "model_defaults_reach_hydra": ({"model/uc_a.yaml": "defaults:\n  - override /hydra/job_logging: disabled\n"},
                                   ("defaults entry '/hydra/job_logging' reaches outside model",)),
    "model_defaults_other_package": ({"model/uc_a.yaml": "defaults:\n  - other@_global_\n"}, ("reaches outside",)),
    "schema_of_another_group": ({"model/uc_a.yaml": "defaults:\n  - /schema/dataset@_here_\n"}, ("reaches outside",)),
    "experiment_defaults_launcher": ({"experiment/uc_a.yaml": "defaults:\n  - override /hydra/sweeper: optuna\n"},
                                     ("reaches outside experiment",)),
    "search_defaults_launcher": ({"hparams_search/uc_a.yaml": "defaults:\n  - override /hydra/launcher: "
                                  "submitit_slurm\n"}, ("'/hydra/launcher' reaches outside",)),
    "search_defaults_job_logging": ({"hparams_search/uc_a.yaml": "defaults:\n  - /hydra/job_logging: none\n"},
                                    ("reaches outside",)),
    "defaults_package_into_hydra": ({"experiment/uc_a.yaml": "defaults:\n  - override /model@hydra: lenet5\n"},
                                    ("reaches outside",)),
    "defaults_choice_interpolated": ({"experiment/uc_a.yaml": "defaults:\n  - override /model: ${oc.env:M}\n"},
                                     ("reaches outside",)),
    "defaults_schema_path_traversal": ({"model/uc_a.yaml": "defaults:\n  - /schema/model/../../../tmp/x@_here_\n"},
                                       ("reaches outside",)),
    "defaults_plain_path_traversal": ({"model/uc_a.yaml": "defaults:\n  - ../../x\n"}, ("reaches outside",)),
    "defaults_choice_path_traversal": ({"experiment/uc_a.yaml": "defaults:\n  - override /model: ../../x\n"},
                                       ("reaches outside",)),
    "defaults_not_a_list": ({"model/uc_a.yaml": "defaults: {a: 1}\n"}, ("'defaults' must be a list",)),
    "target_in_a_layer": ({"model/uc_a.yaml": "layers:\n  - conv2d: {_target_: os.system}\n"},
                          ("model.layers[0].conv2d._target_", "may not name Python code")),
    "partial_key": ({"optimizer/uc_a.yaml": "_partial_: true\n"}, ("optimizer._partial_",)),
    "python_tag": ({"model/uc_a.yaml": "name: !!python/object/apply:os.system [touch victim.txt]\n"},
                   ("not valid YAML", "constructor")),
    "binary_tag": ({"model/uc_a.yaml": "name: !!binary aGVsbG8=\n"}, ("a bytes is not a config value",)),
    "set_tag": ({"model/uc_a.yaml": "name: !!set {a, b}\n"}, ("a set is not a config value",)),
    "interpolation_in_a_key": ({"model/uc_a.yaml": "\"${oc.env:X}\": 1\n"}, ("a key may not hold",)),
    "hydra_folder": ({"hydra/launcher/basic.yaml": "_target_: os.system\n"}, ("hydra", "may not hold hydra/ configs")),
    "hydra_default_shadow": ({"hydra/default.yaml": CALLBACK}, ("may not hold hydra/ configs",)),
    "schema_folder": ({"schema/trainer.yaml": "epochs: 1\n"}, ("may not hold schema/ configs",)),
    "subfolder_of_a_group": ({"model/sub/uc_a.yaml": "name: x\n"}, ("sit directly in",)),
    "yml_suffix": ({"model/uc_a.yml": "name: x\n"}, ("rename it uc_a.yaml",)),
    "two_documents": ({"model/uc_a.yaml": "name: x\n---\nhydra: {callbacks: {}}\n"}, ("not valid YAML",)),
    "long_value_is_cut_in_the_message": ({"model/uc_a.yaml": "name: \"${oc.env:" + "k" * 20_000 + "}\"\n"},
                                         ("at most 1,000 characters",)),
    "long_key_is_cut_in_the_message": ({"model/uc_a.yaml": "? " + "k" * 20_000 + "\n: {_target_: x}\n"},
                                       ("may not name Python code",)),
    "newline_in_a_name": ({"model/a\nerror: forged.yaml": "name: x\n"}, ("\\n", "rename it")),
    "equals_in_a_name": ({"model/a=b.yaml": "name: x\n"}, ("a=b.yaml", "letters, digits")),
    "top_level_list": ({"model/uc_a.yaml": "- relu\n"}, ("a mapping of keys to values, not a list",)),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_config_file_is_refused_in_one_line(tmp_path, name):
    files, expect = REFUSED[name]
    assert len(refused(tmp_path, files, *expect)) < 600  # names and values from the file are cut


def test_interpolations_within_the_training_keys_are_kept(tmp_path):
    text = ("name: x\nwidth: 8\nlayers:\n  - conv2d: {out_channels: \"${....width}\", kernel_size: 3}\n"
            "  - linear: {out_features: \"${dataset.num_classes}\"}\n")
    cfg, _ = hydra_settings(*load(tmp_path, {"model/uc_rel.yaml": text}, "model=uc_rel", "dataset=cifar10"))
    assert cfg.model.layers[0].conv2d.out_channels == 8 and cfg.model.layers[1].linear.out_features == 10


def test_what_is_not_refused_reaches_no_hydra_setting(tmp_path):
    """Header tricks Hydra would have obeyed are comments now: the content lands in the group's node."""
    _, baseline = hydra_settings("dataset=mnist_sample")
    headers = {"crlf": "# @package _global_\r\n", "bom": "\ufeff# @package _global_\n",
               "nbsp": "#\u00a0@package\u00a0_global_\n", "tab_in_recipe": "#\t@package\thydra\n",
               "cr_only": "# @package model\r# @package _global_\r"}
    composed = []
    for name, header in headers.items():
        group = "experiment" if name == "tab_in_recipe" else "model"
        body = "trainer: {epochs: 1}\n" if group == "experiment" else "name: x\nhydra:\n  callbacks: {a: 1}\n"
        try:
            rest = load(tmp_path / name, {f"{group}/uc_h_{name}.yaml": header + body}, f"{group}=uc_h_{name}")
        except UserError as err:  # refusing is as good, as long as it says why in one line
            assert "\n" not in str(err) and "@package" in str(err)
            continue
        cfg, settings = hydra_settings(*rest, "dataset=mnist_sample")
        assert settings == baseline, name
        composed.append(name)
        if group == "model":
            assert cfg.model.hydra.callbacks.a == 1  # data in model.*, which nothing reads
    assert {"bom", "cr_only", "tab_in_recipe"} <= set(composed)


def test_the_store_gains_no_hydra_or_schema_option(tmp_path):
    repo = ConfigStore.instance().repo
    before = {group: sorted(repo.get(group, {})) for group in ("hydra", "schema")}
    load(tmp_path, {f"{group}/uc_s.yaml": "seed: 1\n" for group in ("model", "dataset", "trainer", "optimizer",
                                                                       "scheduler", "experiment", "hparams_search")})
    assert {group: sorted(repo.get(group, {})) for group in ("hydra", "schema")} == before
    assert {ConfigStore.instance().load(f"{g}/uc_s.yaml").package for g in ("model", "experiment")} == {
        "model", "_global_"}


def test_the_same_config_in_two_folders_is_refused(tmp_path):
    write(tmp_path / "a", {"model/uc_twice.yaml": MY_MODEL})
    write(tmp_path / "b", {"model/uc_twice.yaml": MY_MODEL, ".#uc_lock.yaml": "", "model/.uc.yaml.swp": ""})
    with pytest.raises(UserError, match="model/uc_twice.yaml is in more than one --config-dir"):
        userconfig.take_config_dirs(["-cd", str(tmp_path / "a"), "--config-dir", str(tmp_path / "b")])


def test_a_folder_of_many_large_files_is_refused_before_any_is_read(tmp_path):
    (tmp_path / "dataset").mkdir()
    for i in range(21):  # sparse: 1 MB each as the folder's listing says, nothing on the disk
        with open(tmp_path / "dataset" / f"uc_big{i}.yaml", "wb") as file:
            file.truncate(1_000_000)
    refused(tmp_path, {}, "more than 20,000,000 bytes", "right folder")


# ------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, expect", [
    (["hydra.searchpath=[file://cfg]"], "hydra.searchpath: configs of your own are read by cnn-cli"),
    (["hydra.searchpath=['file://cfg']"], "hydra.searchpath"),
    (['hydra.searchpath=["file://cfg"]'], "hydra.searchpath"),
    (["+hydra.searchpath=[file://cfg]"], "+hydra.searchpath"),
    (["++hydra.searchpath=[pkg://os]"], "++hydra.searchpath"),
    (["hydra.searchpath.0=file://cfg"], "hydra.searchpath.0"),
    (["~hydra.searchpath"], "hydra.searchpath"),
    (["hydra={searchpath:[file://cfg]}"], "configs of your own are read by cnn-cli"),
    (["--config-path", "/tmp"], "--config-path: the tools' own config is fixed"),
    (["--config-p=/tmp"], "--config-path"),
    (["-cp", "/tmp"], "--config-path"),
    (["--config-name", "x"], "--config-name"),
    (["--config-n=x"], "--config-name"),
    (["-cn", "x"], "--config-name"),
    (["--experimental-rerun", "config.pickle"], "--experimental-rerun: a pickled config can run code"),
    (["--experimental=config.pickle"], "--experimental-rerun"),
    (["model@hydra.job_logging=lenet5"], "model@hydra.job_logging: a config stays in its own group"),
    (["experiment@_global_=smoke"], "a config stays in its own group"),
    (["model=../../../../tmp/cfg/evil"], "choose the model config by its name"),
    (["-m", "experiment=smoke,../x/evil"], "choose the experiment config by its name"),
    (["hydra/job_logging=../../x"], "hydra/job_logging=../../x: choose"),
    (["debug=../../etc/x"], "choose the debug config by its name"),  # a shipped group a folder cannot hold
    (["--config-dir"], "--config-dir: give the folder"),
    (["--config-dir", "nowhere/at/all"], "--config-dir nowhere/at/all: no such folder"),
])
def test_other_routes_to_hydras_search_path_are_refused(args, expect):
    with pytest.raises(UserError) as err:
        userconfig.take_config_dirs(args)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_paths_where_paths_belong_pass(tmp_path):
    args = ["resume=outputs/2026-12-01/10-00-00", "init_from=../runs/best.pt", "dataset.root=../data", "-m",
            "optimizer.lr=0.01,0.1", "hydra.run.dir=../elsewhere", "hydra/launcher=joblib"]
    assert userconfig.take_config_dirs(args) == args


def test_what_argparse_would_read_as_a_folder_option_is_never_passed_on(tmp_path):
    """Whatever is left, Hydra's own parser finds no --config-dir in it; after `--` nothing is an option."""
    for argv in (["-cd", str(tmp_path), "--config-dir", str(tmp_path)], ["model=x", "--config-dir=" + str(tmp_path)]):
        assert "--config-dir" not in " ".join(userconfig.take_config_dirs(argv))


# ------------------------------------------------------------------------- bounded work

def test_billion_laughs_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    start = time.monotonic()
    refused(tmp_path, {"model/uc_laughs.yaml": "\n".join(lines) + "\n"}, "more than 200,000 values",
            "YAML aliases")
    assert time.monotonic() - start < 5


def test_a_few_aliases_are_fine(tmp_path):
    text = "name: x\nblock: &b [{conv2d: {out_channels: 8, kernel_size: 3}}, relu]\nlayers: [*b, *b]\n"
    load(tmp_path, {"model/uc_alias.yaml": text})


def test_an_alias_inside_itself_is_refused(tmp_path):
    refused(tmp_path, {"model/uc_loop.yaml": "layers: &a [*a]\n"}, "refers to a node that holds it")


@pytest.mark.parametrize("text", ["name: x\nlayers: " + "[" * 10_000 + "]" * 10_000 + "\n",
                                  "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 300)),
                                  "layers: " + "{a: " * 150 + "1" + "}" * 150 + "\n"])
def test_deep_nesting_is_refused_before_it_is_built(tmp_path, text):
    refused(tmp_path, {"model/uc_deep.yaml": text}, "nested more than 100 deep")


def test_a_large_file_is_refused_unread(tmp_path):
    refused(tmp_path, {"model/uc_big.yaml": "# " + "x" * 1_000_001 + "\n"}, "limit 1,000,000 bytes")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "dangling"])
def test_a_config_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path, kind):
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "uc_odd.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero" if kind == "dev_zero" else tmp_path / "gone.yaml")
    start = time.monotonic()
    refused(tmp_path, {}, "uc_odd.yaml", "not a regular file" if kind != "dangling" else "cannot read it")
    assert time.monotonic() - start < 5


def test_symlinks_lead_to_data_checked_like_any_other(tmp_path):
    outside = write(tmp_path / "outside", {"good.yaml": MY_MODEL, "evil.yaml": CALLBACK.replace("hydra", "x"),
                                          "group/uc_linked_group.yaml": MY_MODEL})
    (tmp_path / "cfg" / "model").mkdir(parents=True)
    (tmp_path / "cfg" / "model" / "uc_linked.yaml").symlink_to(outside / "good.yaml")
    userconfig.take_config_dirs(["--config-dir", str(tmp_path / "cfg")])
    assert ConfigStore.instance().load("model/uc_linked.yaml").node.name == "mine"
    (tmp_path / "cfg" / "model" / "uc_evil.yaml").symlink_to(outside / "evil.yaml")
    refused(tmp_path / "cfg", {}, "uc_evil.yaml", "x.callbacks.wipe._target_")
    (tmp_path / "cfg" / "model" / "uc_evil.yaml").unlink()
    (tmp_path / "cfg" / "model" / "sub").symlink_to(outside / "group", target_is_directory=True)
    refused(tmp_path / "cfg", {}, "sit directly in")
    (tmp_path / "cfg" / "model" / "sub").unlink()
    (tmp_path / "cfg2").mkdir()
    (tmp_path / "cfg2" / "model").symlink_to(outside / "group", target_is_directory=True)
    userconfig.take_config_dirs(["--config-dir", str(tmp_path / "cfg2")])
    assert ConfigStore.instance().load("model/uc_linked_group.yaml").node.name == "mine"
