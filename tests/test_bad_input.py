"""A catalogue of bad input, each given to the real cnn-train, cnn-eval, cnn-summary or
cnn-predict entry point.

Every case runs in its own process, in a fresh folder of its own as the working directory,
and must end with exit status 2 and exactly one line on stderr, "error: ...", naming the key,
layer or file at fault and the fix; no traceback anywhere; and nothing written or changed in
that folder (the files a case set up there, checkpoints and dataset files included, stay byte
for byte as they were).

A console script pays seconds of interpreter and torch start-up, so most cases run the same
entry point in a forked copy of this process (helpers.Started: its own exit status, stderr,
folder and environment); the cases in SCRIPT run the installed script itself, one or more of
each command and each kind of failure, so the whole path from the shell is proven too. They
run two at a time, and each test reads its own result. The checkpoints come from one tiny real
training run on the bundled sample; the MNIST files are written here in torchvision's layout
(tests/helpers.py). CUDA_VISIBLE_DEVICES is emptied for every case: "no GPU" holds on any
machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers import BIN, MNIST_FILES, NO_GPU, ONE_THREAD, TINY, Started, one_error_line, run_side_by_side, write_idx

pytestmark = pytest.mark.e2e

# one thread per process and no GPU: the cases run side by side on a small machine
ENV = {**ONE_THREAD, **NO_GPU}
SAMPLE = "dataset=mnist_sample"  # every cnn-train case that is not about data: nothing is downloaded
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads any folder, chmod 000 or not
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


# ------------------------------------------------------------------------- what a case sets up

# writes what a case needs into its folder (given the fixtures: the training run's folders)
Setup = Callable[[Path, dict[str, Path]], None]


def _finished_run(cwd: Path, fx: dict[str, Path]) -> None:
    shutil.copytree(fx["run"], cwd / "run")


def _unfinished_run(cwd: Path, fx: dict[str, Path]) -> None:
    shutil.copytree(fx["unfinished"], cwd / "run")


def _run_without_validation(cwd: Path, fx: dict[str, Path]) -> None:
    """The finished run's folder, its checkpoint's config saying dataset.val_size=0."""
    import torch

    _finished_run(cwd, fx)
    best = cwd / "run" / "checkpoints" / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["config"]["dataset"]["val_size"] = 0
    torch.save(state, best)


def _random_bytes(cwd: Path, fx: dict[str, Path]) -> None:
    (cwd / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _half_checkpoint(cwd: Path, fx: dict[str, Path]) -> None:
    whole = (fx["run"] / "checkpoints" / "last.pt").read_bytes()
    (cwd / "half.pt").write_bytes(whole[: len(whole) // 2])


def _a_file(name: str) -> Setup:
    def setup(cwd: Path, fx: dict[str, Path]) -> None:
        (cwd / name).write_text("not a folder\n")
    return setup


def _empty_folder(cwd: Path, fx: dict[str, Path]) -> None:
    (cwd / "empty").mkdir()


def _pictures(*, empty_class: bool = False, corrupt: bool = False) -> Setup:
    """pics/<class>/*.png, 4 tiny images a class; an empty class folder, or a corrupt file, if asked."""
    def setup(cwd: Path, fx: dict[str, Path]) -> None:
        from PIL import Image

        for name in ("ant", "bee"):
            (cwd / "pics" / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(cwd / "pics" / name / f"{i}.png")
        if empty_class:
            (cwd / "pics" / "cow").mkdir()
        if corrupt:
            (cwd / "pics" / "bee" / "half.png").write_bytes((cwd / "pics" / "bee" / "0.png").read_bytes()[:30])
    return setup


def _truncated_idx(cwd: Path, fx: dict[str, Path]) -> None:
    raw = write_idx(cwd / "data" / "MNIST" / "raw")
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])


def _locked_root(cwd: Path, fx: dict[str, Path]) -> None:
    write_idx(cwd / "locked" / "FashionMNIST" / "raw")
    (cwd / "locked").chmod(0)


def _configs(files: dict[str, bytes | str]) -> Setup:
    """A config folder from someone else (for --config-dir cfg), and a file its code would hit."""
    def setup(cwd: Path, fx: dict[str, Path]) -> None:
        (cwd / "victim.txt").write_text("keep me\n")
        for rel, content in files.items():
            path = cwd / "cfg" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


CALLBACK = """# @package _global_
hydra:
  callbacks:
    wipe:
      _target_: builtins.open
      file: victim.txt
      mode: w
model:
  name: evil
"""
TWO_HEADERS = ("# @package model\n# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      file:\n"
               "        class: logging.FileHandler\n        filename: victim.txt\n        mode: w\n")
OC_CREATE = ("hydra:\n  callbacks: \"${oc.create:'{wipe: {_target_: builtins.open, file: victim.txt, mode: w}}'}\"\n"
             "trainer: {epochs: 1}\n")
NESTED = "name: deep\nlayers: " + "[{residual: {layers: " * 25 + "[relu]" + "}}]" * 25 + "\n"


def _edited_checkpoint(edit: Callable[[dict], None], name: str = "edited.pt") -> Setup:
    """The training run's best.pt with something changed, as a file from someone else."""
    def setup(cwd: Path, fx: dict[str, Path]) -> None:
        import torch

        state = torch.load(fx["run"] / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
        edit(state)
        torch.save(state, cwd / name)
    return setup


def _wider_first_conv(state: dict) -> None:
    state["config"]["model"]["layers"][0]["conv2d"]["out_channels"] = 8


def _author_paths(state: dict) -> None:
    # fallback=true as cnn-train records it by default: an evaluation still never swaps the test set
    state["config"]["dataset"].update(name="mnist", source="MNIST", root="author/data", download=True, fallback=True)


def _labels_beyond_classes(cwd: Path, fx: dict[str, Path]) -> None:
    labels = write_idx(cwd / "data" / "MNIST" / "raw") / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 5] = 12
    labels.write_bytes(bytes(data))


def _float_images(cwd: Path, fx: dict[str, Path]) -> None:
    raw = write_idx(cwd / "data" / "MNIST" / "raw")
    for prefix, n in (("train", 300), ("t10k", 50)):
        pixels = np.random.default_rng(0).random((n, 28, 28), dtype=np.float32).astype(">f4")
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0D03, n, 28, 28) + pixels.tobytes())


def _recompressed_archives(cwd: Path, fx: dict[str, Path]) -> None:
    """The four Fashion-MNIST files as another site serves them: gzip with another header."""
    raw = write_idx(cwd / "data" / "FashionMNIST" / "raw")
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), mtime=1))
        (raw / name).unlink()


def _used_sweep(cwd: Path, fx: dict[str, Path]) -> None:
    (cwd / "sweep" / "0").mkdir(parents=True)
    (cwd / "sweep" / "0" / "metrics.json").write_text('{"best_val_acc": 0.99, "test_acc": 0.99}\n')


def _never_saved_run(cwd: Path, fx: dict[str, Path]) -> None:
    """What a run killed in its first epoch leaves: its record, log and events, no checkpoint."""
    shutil.copytree(fx["run"] / ".hydra", cwd / "run" / ".hydra")
    shutil.copy(fx["run"] / "train.log", cwd / "run" / "train.log")
    (cwd / "run" / "tb").mkdir()


def _planted_tb_link(cwd: Path, fx: dict[str, Path]) -> None:
    _unfinished_run(cwd, fx)
    shutil.move(cwd / "run" / "tb", cwd / "elsewhere")
    (cwd / "run" / "tb").symlink_to(cwd / "elsewhere")


def _run_and_a_digit(cwd: Path, fx: dict[str, Path]) -> None:
    from PIL import Image

    _finished_run(cwd, fx)
    Image.new("L", (28, 28)).save(cwd / "digit.png")


def summary(*args: str, expect: tuple[str, ...], setup=None) -> Case:
    return Case("cnn-summary", args, expect, setup)


# ------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    tool: str  # cnn-train, cnn-eval or cnn-summary
    args: tuple[str, ...]
    expect: tuple[str, ...]  # distinctive parts of the one error line: the key, layer or file, and the fix
    setup: Setup | None = None  # files it needs in its folder
    needs_run: bool = False  # waits for the training run's checkpoints
    reject: tuple[str, ...] = ()  # what the line must not say (a wrong diagnosis, a wrong fix)


def train(*args: str, expect: tuple[str, ...], setup=None, needs_run: bool = False,
          reject: tuple[str, ...] = ()) -> Case:
    return Case("cnn-train", args, expect, setup, needs_run, reject)


CASES: dict[str, Case] = {
    # ---- composing the config: unknown options and keys, wrong types, syntax
    "sweep_and_print_the_config": train(
        "-m", "--cfg", "hydra",
        expect=("Only one of --run, --multirun, --cfg", "the same command without -m, with --cfg job")),
    "resolve_without_cfg": summary("--resolve", expect=("The --resolve flag can only be used", "--cfg or --help")),
    "unknown_model_option": train(
        "model=lenet6",
        expect=("model=lenet6: no such model config", "available: ", "lenet5, lenet5_1998, lenet5_bn", "resnet20",
                "--config-dir"),
        reject=("hydra.run.dir",)),
    "misspelt_key": train(
        SAMPLE, "trainer.epoch=3", expect=("trainer.epoch: no such key", "did you mean trainer.epochs?")),
    "misspelt_nested_key": train(
        SAMPLE, "dataset.augment.fli=true",
        expect=("dataset.augment.fli: no such key", "did you mean dataset.augment.flip?")),
    "added_key_nothing_reads": train(
        SAMPLE, "+trainer.foo=1",
        expect=("trainer.foo: no such key, nothing would read it", "valid keys: epochs, batch_size")),
    "int_given_text": train(
        SAMPLE, "trainer.epochs=abc", expect=("trainer.epochs: ", "'abc'", "Integer")),
    "bool_given_text": train(
        SAMPLE, "trainer.channels_last=maybe", expect=("trainer.channels_last: ", "'maybe'", "bool")),
    "float_given_text": train(
        SAMPLE, "optimizer.lr=fast", expect=("optimizer.lr: ", "'fast'", "Float")),
    "bad_override_syntax": train(
        "model=[", expect=("model=[", "https://hydra.cc/docs/advanced/override_grammar/basic/")),
    # ---- values out of range
    "zero_epochs": train(SAMPLE, "trainer.epochs=0", expect=("trainer.epochs=0 must be >= 1",)),
    "zero_batch_size": train(SAMPLE, "trainer.batch_size=0", expect=("trainer.batch_size=0 must be >= 1",)),
    "label_smoothing_above_one": train(
        SAMPLE, "trainer.label_smoothing=1.5", expect=("trainer.label_smoothing=1.5 must be in [0, 1)", "e.g. 0.1")),
    "negative_lr": train(
        SAMPLE, "optimizer.lr=-1", expect=("optimizer.lr=-1", "must be > 0", "e.g. optimizer.lr=0.01")),
    "a_key_the_renamed_optimizer_does_not_take": train(
        SAMPLE, "optimizer.name=Adadelta",
        expect=("optimizer.momentum: Adadelta takes no such argument", "optimizer=adadelta")),
    "a_scheduler_without_its_required_argument": train(
        SAMPLE, "scheduler=exponentiallr", expect=("scheduler.gamma must be given",)),
    "negative_val_size": train(
        SAMPLE, "dataset.val_size=-1", expect=("dataset.val_size=-1 must be >= 0", "no validation")),
    "plateau_without_a_validation_split": train(
        SAMPLE, "dataset.val_size=0", "scheduler=plateau",
        expect=("scheduler.monitor=val_loss", "dataset.val_size=0", "another scheduler")),
    "progress_neither_auto_nor_a_switch": train(
        SAMPLE, "trainer.progress=sometimes", expect=("trainer.progress=sometimes", "choose auto", "true or false")),
    "zero_grad_clip_norm": train(
        SAMPLE, "trainer.grad_clip_norm=0", expect=("trainer.grad_clip_norm=0", "must be > 0", "or null")),
    "warmup_longer_than_the_run": train(
        SAMPLE, "trainer.epochs=2", "scheduler.warmup_epochs=5",
        expect=("scheduler.warmup_epochs=5", "less than trainer.epochs=2")),
    "plateau_on_accuracy_in_min_mode": train(
        SAMPLE, "scheduler=plateau", "scheduler.monitor=val_acc",
        expect=("scheduler.monitor=val_acc improves as it rises", "set scheduler.mode=max")),
    "mean_with_three_channels_for_grey_images": train(
        SAMPLE, "dataset.mean=[0.5,0.5,0.5]", expect=("dataset.mean", "one value per channel (1)", "got 3 and 1")),
    "summary_unknown_norm": summary(
        "model=lenet5_bn", "model.norm=batchnorm3d", expect=("model.norm=batchnorm3d", "'lenet5_bn' offers",
                                                            "batchnorm | groupnorm | layernorm | instancenorm | none")),
    "train_unknown_norm": train(
        SAMPLE, "model=lenet5_bn", "model.norm=", expect=("model.norm=: the model", "batchnorm | groupnorm")),
    "summary_mean_with_three_channels_for_grey_images": Case(
        "cnn-summary", ("dataset=mnist_sample", "dataset.mean=[0.5,0.5,0.5]"),
        ("dataset.mean", "one value per channel (1)", "got 3 and 1")),
    "summary_flip_for_signals": Case(
        "cnn-summary", ("model=imu_cnn1d", "dataset=basic_motions", "dataset.augment.flip=true"),
        ("dataset.augment.flip=true", "1-D signals", "reverse time", "dataset.augment.flip=false")),
    "summary_random_shape_with_three_means": Case(
        "cnn-summary",
        ("model=imu_cnn1d", "dataset=random", "dataset.input_shape=[6,100]", "dataset.mean=[0.5,0.5,0.5]"),
        ("one value per channel (6)", "got 3 and 6", "leave them out (null)")),
    "null_mean_for_a_real_dataset": train(
        SAMPLE, "dataset.mean=null", expect=("dataset.mean=null is only for dataset=random", "dataset.mean=[0.5]")),
    "input_shape_with_five_axes": train(
        "dataset=random", "dataset.input_shape=[1,2,3,4,5]",
        expect=("dataset.input_shape=[1, 2, 3, 4, 5]", "[C, L]", "[C, D, H, W]")),
    # ---- the model's shapes
    "summary_kernel_larger_than_input": Case(
        "cnn-summary", ("model.layers.0.conv2d.kernel_size=40",),
        ("error: model.layers[0] (conv2d): kernel 40 is larger than its padded input", "28 + 2 x padding 2 = 32",
         "smaller kernel_size")),
    "summary_linear_after_unflattened_map": Case(
        "cnn-summary", ("model.layers.6=relu",),
        ("error: model.layers[7] (linear)", "50 x 7 x 7", "add `- flatten` before it")),
    "train_kernel_larger_than_input": train(
        SAMPLE, "model.layers.0.conv2d.kernel_size=40",
        expect=("model.layers[0] (conv2d)", "kernel 40 is larger than its padded input", "smaller kernel_size")),
    "train_linear_after_unflattened_map": train(
        SAMPLE, "model.layers.6=relu",
        expect=("model.layers[7] (linear)", "50 x 7 x 7", "add `- flatten` before it")),
    "last_layer_width_is_not_the_class_count": train(
        SAMPLE, "model.layers.9.linear.out_features=7",
        expect=("model.layers:", "ends with output 7", "has 10 classes", "out_features: ${dataset.num_classes}")),
    # ---- device and precision
    "cuda_without_a_gpu": train(
        SAMPLE, "trainer.device=cuda", expect=("trainer.device=cuda", "no CUDA GPU", "trainer.device=auto or cpu")),
    "float16_on_the_cpu": train(
        SAMPLE, "trainer.device=cpu", "trainer.precision=16",
        expect=("trainer.precision=16 needs a CUDA GPU", "trainer.precision=bf16 or 32")),
    "unknown_precision": train(SAMPLE, "trainer.precision=fp8", expect=("trainer.precision=fp8", "32, bf16, 16")),
    # ---- data
    "dataset_root_is_a_file": train(
        "dataset=mnist", "dataset.root=notafolder.txt", setup=_a_file("notafolder.txt"),
        expect=("dataset.root=notafolder.txt is a file, not a folder", "MNIST/")),
    "dataset_root_unreadable": train(
        "dataset=fashion_mnist", "dataset.root=locked", "dataset.download=false", setup=_locked_root,
        expect=("locked", "ermission denied"), reject=("cannot write", "hydra.run.dir")),
    "cifar_files_missing": train(
        "dataset=cifar10", "dataset.root=nothing", "dataset.download=false",
        expect=("dataset 'cifar10'", "nothing/cifar-10-batches-py", *CIFAR_FILES, "dataset.download=true")),
    "empty_root_without_download": train(
        "dataset=fashion_mnist", "dataset.root=empty", "dataset.download=false", setup=_empty_folder,
        expect=("dataset 'fashion_mnist'", "empty/FashionMNIST/raw", *MNIST_FILES, "dataset.download=true")),
    "truncated_dataset_file": train(
        "dataset=mnist", "dataset.root=data", "dataset.download=false", setup=_truncated_idx,
        expect=("data/MNIST/raw/train-images-idx3-ubyte is truncated or corrupted", "download again")),
    "imagefolder_without_a_root": train(
        "dataset=imagefolder", expect=("dataset.root is empty", "dataset.root=DIR", "DIR/<class>/")),
    "imagefolder_root_is_a_file": train(
        "dataset=imagefolder", "dataset.root=notafolder.txt", setup=_a_file("notafolder.txt"),
        expect=("dataset.root=notafolder.txt is a file, not a folder", "<class>/ folders")),
    "imagefolder_empty_class_folder": train(
        "dataset=imagefolder", "dataset.root=pics", setup=_pictures(empty_class=True),
        expect=("the class folder pics/cow holds no images", "remove the folder")),
    "imagefolder_bad_file_with_skip_bad_false": train(
        "dataset=imagefolder", "dataset.root=pics", "dataset.skip_bad=false", setup=_pictures(corrupt=True),
        expect=("pics/bee/half.png is not a readable image", "dataset.skip_bad=true")),
    "random_data_with_one_count": train(
        "dataset=random", "dataset.num_images=[500]",
        expect=("dataset.num_images=[500] must be two counts, [train, test]", "e.g. [50000, 10000]")),
    "image_count_for_a_real_dataset": train(
        SAMPLE, "dataset.num_images=[500,100]",
        expect=("dataset.num_images is only for dataset=random", "trainer.limit_train_batches")),
    # ---- checkpoints
    "resume_missing_path": train(
        "resume=nothing/here", expect=("resume=nothing/here: no checkpoint there", "give a run folder")),
    "resume_random_bytes": train(
        "resume=random.pt", setup=_random_bytes,
        expect=("resume=random.pt", "random.pt is not a readable checkpoint", "not a cnn-cli checkpoint"),
        reject=("could run code",)),
    "resume_finished_run": train(
        "resume=run", setup=_finished_run, needs_run=True,
        expect=("resume=run: that run already finished", "init_from=")),
    "resume_with_a_changed_learning_rate": train(
        "resume=run", "optimizer.lr=1", setup=_unfinished_run, needs_run=True,
        expect=("'optimizer.lr=1' would change the run", "trainer.device", "init_from=")),
    "init_from_another_architecture": train(
        SAMPLE, "model=mlp", "init_from=run/checkpoints/best.pt", setup=_finished_run, needs_run=True,
        expect=("init_from=run/checkpoints/best.pt", "none of its weights fit this model", "conv1.weight",
                "same architecture")),
    "freeze_an_unknown_layer": train(
        SAMPLE, "model=lenet5_bn", "trainer.freeze=[conv1,conv9]",
        expect=("trainer.freeze: 'conv9' is not a layer of this model", "Name column", "did you mean")),
    "eval_without_a_checkpoint": Case(
        "cnn-eval", (), ("no checkpoint given", "cnn-eval checkpoint=outputs/NAME/DATE_TIME/checkpoints/best.pt")),
    "eval_random_bytes": Case(
        "cnn-eval", ("checkpoint=random.pt",),
        ("checkpoint=random.pt", "random.pt is not a readable checkpoint", "not a cnn-cli checkpoint"), _random_bytes,
        reject=("could run code",)),
    "eval_truncated_checkpoint": Case(
        "cnn-eval", ("checkpoint=half.pt",), ("checkpoint=half.pt", "is not a readable checkpoint", "truncated"),
        _half_checkpoint, needs_run=True),
    "eval_val_split_of_a_run_without_one": Case(
        "cnn-eval", ("checkpoint=run/checkpoints/best.pt", "split=val"),
        ("split=val", "no validation split (dataset.val_size=0)", "split=test"), _run_without_validation,
        needs_run=True),
    "eval_split_train": Case(
        "cnn-eval", ("checkpoint=run/checkpoints/best.pt", "split=train"), ("split=train", "choose test or val"),
        _finished_run, needs_run=True),
    # ---- a config folder from someone else is data (issue 13)
    "model_config_sets_hydra_callbacks": summary(
        "--config-dir", "cfg", "model=evil", setup=_configs({"model/evil.yaml": CALLBACK}),
        expect=("cfg/model/evil.yaml", "'# @package _global_'", "sets only model.*")),
    "experiment_sets_hydra_callbacks": train(
        SAMPLE, "--config-dir", "cfg", "experiment=evil", setup=_configs({"experiment/evil.yaml": CALLBACK}),
        expect=("cfg/experiment/evil.yaml", "key 'hydra'", "Hydra's other settings come from the command line")),
    "experiment_sets_job_logging": summary(
        "--config-dir", "cfg", setup=_configs({"experiment/log.yaml": "# @package _global_\nhydra:\n  job_logging:\n"
                                                "    root: {level: INFO}\n"}),
        expect=("cfg/experiment/log.yaml", "key 'hydra'")),
    "layer_names_a_target": summary(
        "--config-dir", "cfg", "model=t", setup=_configs(
            {"model/t.yaml": "name: t\nlayers:\n  - conv2d: {_target_: os.system, out_channels: 4, kernel_size: 3}\n"}),
        expect=("cfg/model/t.yaml", "model.layers[0].conv2d._target_", "may not name Python code")),
    "model_defaults_reach_hydra": summary(
        "--config-dir", "cfg", "model=d", setup=_configs(
            {"model/d.yaml": "defaults:\n  - override /hydra/job_logging: disabled\n  - _self_\nname: d\n"}),
        expect=("cfg/model/d.yaml", "defaults entry '/hydra/job_logging' reaches outside model")),
    "shadowing_a_hydra_plugin_config": summary(
        "--config-dir", "cfg", setup=_configs({"hydra/launcher/basic.yaml": "_target_: os.system\n"}),
        expect=("cfg/hydra", "may not hold hydra/ configs")),
    "shadowing_cnn_trains_hydra_settings": train(  # train.yaml chooses hydra/default: ours, never the folder's
        SAMPLE, "--config-dir", "cfg", setup=_configs(
            {"hydra/default.yaml": "callbacks:\n  wipe: {_target_: builtins.open, file: victim.txt, mode: w}\n"}),
        expect=("cfg/hydra", "may not hold hydra/ configs")),
    # issue 21: the folder is read by cnn-cli, never by Hydra, so no header, string or folder alias reaches hydra.*
    "two_package_headers": train(
        SAMPLE, "--config-dir", "cfg", "model=evil", setup=_configs({"model/evil.yaml": TWO_HEADERS}),
        expect=("cfg/model/evil.yaml", "'# @package _global_'", "remove that line")),
    "callback_built_from_a_string": train(
        SAMPLE, "--config-di", "cfg", "experiment=evil", setup=_configs({"experiment/evil.yaml": OC_CREATE}),
        expect=("cfg/experiment/evil.yaml", "key 'hydra'")),
    "search_params_set_hydra_keys": train(
        SAMPLE, "-m", "--config-dir", "cfg", "hparams_search=evil", setup=_configs({"hparams_search/evil.yaml": (
            "hydra:\n  sweeper:\n    params:\n      hydra.job_logging.handlers.file.filename: victim.txt\n")}),
        expect=("cfg/hparams_search/evil.yaml", "hydra.sweeper.params.hydra.job_logging", "only training keys")),
    "search_storage_outside_the_sweep": train(
        SAMPLE, "-m", "-cd", "cfg", "hparams_search=evil", setup=_configs({"hparams_search/evil.yaml": (
            "hydra:\n  sweeper:\n    storage: sqlite:///victim.txt\n")}),
        expect=("hydra.sweeper.storage", "command line's")),
    "quoted_searchpath": train(
        SAMPLE, "hydra.searchpath=['file://cfg']", setup=_configs({"hydra/default.yaml": CALLBACK.split("\n", 1)[1]}),
        expect=("hydra.searchpath", "--config-dir DIR")),
    "group_choice_is_a_path": train(  # Hydra would read any YAML file there, its '# @package _global_' and all
        SAMPLE, "model=../../../../../../../../../../tmp/evil", expect=("choose the model config by its name",)),
    "own_config_with_a_shipped_name": summary(
        "--config-dir", "cfg", "model=lenet5", setup=_configs({"model/lenet5.yaml": "name: mine\nlayers: [flatten]\n"}),
        expect=("cfg/model/lenet5.yaml", "ships a model config named lenet5", "model=my_lenet5")),
    "yaml_syntax_error": summary(
        "--config-dir", "cfg", "model=bad", setup=_configs({"model/bad.yaml": "name: bad\nlayers: [relu\n"}),
        expect=("cfg/model/bad.yaml", "line ", "not valid YAML")),
    "yaml_tab_indentation": summary(
        "--config-dir", "cfg", "model=tab", setup=_configs({"model/tab.yaml": "name: tab\nlayers:\n\t- relu\n"}),
        expect=("cfg/model/tab.yaml", "not valid YAML", "spaces, not tabs")),
    "yaml_duplicate_key": summary(
        "--config-dir", "cfg", "model=dup", setup=_configs({"model/dup.yaml": "name: a\nname: b\nlayers: [relu]\n"}),
        expect=("cfg/model/dup.yaml", "duplicate key")),
    "yaml_not_utf8": summary(
        "--config-dir", "cfg", "model=latin", setup=_configs({"model/latin.yaml": b"name: caf\xe9\nlayers: [relu]\n"}),
        expect=("cfg/model/latin.yaml", "not UTF-8", "save the config as UTF-8")),
    "config_path_flag": summary("--config-path", "/tmp", expect=("--config-path", "--config-dir DIR")),
    "blocks_nested_too_deep": summary(
        "--config-dir", "cfg", "model=deep", setup=_configs({"model/deep.yaml": NESTED}),
        expect=("nested more than 20 deep",)),
    # ---- what the builder must stop before PyTorch does
    "repeat_a_billion_times": summary(
        "model.layers=[{repeat: {times: 1000000000, layers: [relu]}}]",
        expect=("model.layers[0] (repeat)", "times must be a whole number from 1 to 10,000")),
    "a_trillion_weights": summary(
        "model.layers.0.conv2d.out_channels=1099511627776",
        expect=("model.layers[0] (conv2d)", "more than 10,000,000,000")),
    "kernel_of_two_to_the_63": summary(
        "model.layers.0.conv2d.kernel_size=9223372036854775807", expect=("model.layers[0] (conv2d)", "overflowed")),
    "kernel_size_zero": summary(
        "model.layers.0.conv2d.kernel_size=0", expect=("model.layers[0] (conv2d)", "must be >= 1")),
    "flatten_start_dim_out_of_range": summary(
        "model.layers.6={flatten: {start_dim: 5}}", expect=("model.layers[6] (flatten)", "Dimension out of range")),
    "groupnorm_zero_groups": summary(
        "model.layers.1={groupnorm: {num_groups: 0}}",
        expect=("model.layers[1] (groupnorm)", "num_groups=0 must be >= 1")),
    "maxpool_returning_indices": summary(
        "+model.layers.2.maxpool2d.return_indices=true", expect=("model.layers[2] (maxpool2d)", "return_indices")),
    # ---- numbers that cannot be meant
    "infinite_learning_rate": train(SAMPLE, "optimizer.lr=inf", expect=("optimizer.lr=inf: must be a finite number",)),
    "nan_learning_rate": train(SAMPLE, "optimizer.lr=nan", expect=("optimizer.lr=nan: must be a finite number",)),
    # ---- data whose contents are wrong
    "labels_beyond_the_classes": train(
        "dataset=mnist", "dataset.root=data", "dataset.download=false", setup=_labels_beyond_classes,
        expect=("training labels run from 0 to 12", "dataset.num_classes=10")),
    "recompressed_archives": train(
        "dataset=fashion_mnist", "dataset.root=data", "dataset.download=false", setup=_recompressed_archives,
        expect=("data/FashionMNIST/raw/train-images-idx3-ubyte.gz is there but", "md5", "gunzip -k")),
    "float_image_files": train(
        "dataset=mnist", "dataset.root=data", "dataset.download=false", setup=_float_images,
        expect=("data/MNIST/raw/train-images-idx3-ubyte holds float32 values, not 8-bit (uint8) ones",)),
    # ---- a folder that holds a run or a sweep is not overwritten
    "new_run_in_a_finished_runs_folder": train(
        *TINY, "hydra.run.dir=run", setup=_finished_run, needs_run=True,
        expect=("hydra.run.dir=run already holds a run", "cnn-train resume=run")),
    "new_sweep_in_a_used_sweep_folder": train(
        "-m", *TINY, "hydra.sweep.dir=sweep", "seed=1,2", setup=_used_sweep,
        expect=("hydra.sweep.dir=sweep already holds a sweep",)),
    "resume_best_of_a_finished_run": train(
        "resume=run/checkpoints/best.pt", setup=_finished_run, needs_run=True,
        expect=("resume=run/checkpoints/best.pt: that run already finished",)),
    # ---- checkpoints whose contents do not fit
    "eval_weights_do_not_fit_the_stored_config": Case(
        "cnn-eval", ("checkpoint=edited.pt",), ("checkpoint=edited.pt", "do not fit", "conv1.weight"),
        _edited_checkpoint(_wider_first_conv), needs_run=True),
    "eval_checkpoint_without_progress": Case(
        "cnn-eval", ("checkpoint=edited.pt",),
        ("edited.pt is not a complete cnn-cli checkpoint", "'progress' is missing"),
        _edited_checkpoint(lambda state: state.pop("progress")), needs_run=True),
    "eval_checkpoint_with_a_norm_its_model_lacks": Case(
        "cnn-eval", ("checkpoint=edited.pt",),
        ("checkpoint=edited.pt: its stored config is not valid (model.norm=groupnorm: the model 'lenet5' has no norm "
         "switch", "damaged or edited"),
        _edited_checkpoint(lambda state: state["config"]["model"].update(norm="groupnorm")), needs_run=True),
    "eval_checkpoint_model_not_a_state_dict": Case(
        "cnn-eval", ("checkpoint=edited.pt",), ("its 'model' is not a state dict of tensors",),
        _edited_checkpoint(lambda state: state.update(model={"conv1.weight": [1, 2]})), needs_run=True),
    "eval_never_uses_the_authors_paths": Case(
        "cnn-eval", ("checkpoint=edited.pt",),
        ("the checkpoint's dataset 'mnist' is not in data/ (root= not given)", "data/MNIST/raw (train-images-idx3",
         "with root=DIR", "dataset.fallback=true"),
        _edited_checkpoint(_author_paths), needs_run=True, reject=("author/data",)),
    "bad_job_logging": train(
        SAMPLE, "hydra.job_logging.root.level=LOUD",
        expect=("hydra.job_logging: Unable to configure root logger", "Unknown level: 'LOUD'", "leave it out")),
    # ---- where the run would be written
    # ---- hostile and clumsy input, third pass (issue 21)
    "predict_output_on_the_runs_best_checkpoint": Case(
        "cnn-predict", ("checkpoint=run", "inputs=[digit.png]", "output=run/checkpoints/best.pt"),
        ("output=run/checkpoints/best.pt is a checkpoint, which writing there would destroy",), _run_and_a_digit,
        needs_run=True),
    "resume_with_a_planted_tb_link": train(
        "resume=run", setup=_planted_tb_link, needs_run=True,
        expect=("run/tb is a symbolic link", "the run would write wherever it points")),
    "rerun_in_a_run_folder_that_never_saved": train(
        *TINY, "hydra.run.dir=run", setup=_never_saved_run, needs_run=True,
        expect=("hydra.run.dir=run", "stopped before it saved its first checkpoint", "rm -r run")),
    "resume_a_run_that_never_saved": train(
        "resume=run", setup=_never_saved_run, needs_run=True,
        expect=("resume=run", "nothing to resume", "rm -r run", "run/.hydra/overrides.yaml")),
    "override_nested_3000_deep": summary(
        "model.layers=" + "[" * 3000 + "]" * 3000, expect=("model.layers=...", "nested more than 100 brackets deep")),
    "device_meta": train(SAMPLE, "trainer.device=meta", expect=("trainer.device=meta is not a device to train on",)),
    "seed_beyond_64_bits": train(
        SAMPLE, "seed=1180591620717411303424", expect=("seed=1180591620717411303424", "from 0 to 4,294,967,295")),
    "crop_padding_of_100000": summary(
        SAMPLE, "dataset.augment.crop_padding=100000", expect=("crop_padding=100000", "smallest side (28)")),
    "norm_switch_on_a_model_without_one": summary(
        "+model.norm=groupnorm", expect=("model.norm=groupnorm", "'lenet5' has no norm switch")),
    "betas_of_one_value": train(
        SAMPLE, "optimizer=adam", "optimizer.betas=[0.9]", expect=("optimizer.betas=[0.9]: Adam takes 2 values",)),
    "chdir_with_a_relative_root": train(
        "dataset=imagefolder", "dataset.root=pics", "hydra.job.chdir=true", setup=_pictures(),
        expect=("dataset.root=pics does not exist (in ", "where relative paths are looked up")),
    "eval_of_a_run_folder_without_a_validation_split": Case(
        "cnn-eval", ("checkpoint=run", "split=val"), ("split=val", "no validation split"), _run_without_validation,
        needs_run=True),
    "a_newline_in_a_file_name_cannot_forge_a_line": Case(
        "cnn-predict", ("checkpoint=run", "inputs=['a\nerror: all is well.png']"),
        ("inputs: a\\nerror: all is well.png does not exist",), _finished_run, needs_run=True),
    "run_dir_inside_a_file": train(
        SAMPLE, "hydra.run.dir=somefile/run", setup=_a_file("somefile"),
        expect=("somefile/run", "Not a directory", "hydra.run.dir=PATH")),
}

# run as the installed console script, not in a fork: at least one case of each command and of each
# kind of failure (Hydra's own, our checks, the files, the checkpoints), and what a fork cannot
# show (CUDA_VISIBLE_DEVICES counts only before torch starts)
SCRIPT = {"unknown_model_option", "misspelt_key", "bad_override_syntax", "bad_job_logging", "zero_epochs",
          "cuda_without_a_gpu", "summary_kernel_larger_than_input", "experiment_sets_hydra_callbacks",
          "quoted_searchpath", "truncated_dataset_file", "resume_finished_run", "eval_random_bytes",
          "eval_truncated_checkpoint", "predict_output_on_the_runs_best_checkpoint",
          "a_newline_in_a_file_name_cannot_forge_a_line", "run_dir_inside_a_file"}

SKIP: dict[str, str] = {"dataset_root_unreadable": "runs as root, which can read a chmod 000 folder"} if AS_ROOT else {}


# ------------------------------------------------------------------------- running them


@dataclass
class Result:
    proc: subprocess.CompletedProcess
    before: dict[str, object]
    after: dict[str, object]
    hashes_before: dict[str, str]
    hashes_after: dict[str, str]


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root: folders by name, files by size and modification time.

    Folder modification times are left out: a cnn-train attempt stopped by bad input creates
    its run folder (outputs/NAME/DATE_TIME/) and removes it again, which touches the parent's
    time but leaves nothing behind; what is left behind is what this compares."""
    tree: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            tree[rel] = "folder" if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
    return tree


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every readable file under root (the files the case set up)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _start_case(case: Case, name: str, cwd: Path, fx: dict[str, Path], before: dict[str, tuple]) -> Started:
    """Set up the case's folder, record what is in it, and start the case there."""
    cwd.mkdir(parents=True)
    if case.setup:
        case.setup(cwd, fx)
    before[name] = snapshot(cwd), hashes(cwd)
    return Started(case.tool, *case.args, cwd=cwd, env=ENV, fork=name not in SCRIPT)


def _make_unfinished(run: Path, dest: Path) -> None:
    """The finished run as if stopped before its end: its last.pt says finished=False."""
    import torch  # here, not at collection: it costs seconds

    shutil.copytree(run, dest)
    last = dest / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["finished"] = False
    torch.save(state, last)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    for tool in ("cnn-train", "cnn-eval", "cnn-summary", "cnn-predict"):
        assert (BIN / tool).exists(), f"console script {tool} not installed in {BIN}"
    root = tmp_path_factory.mktemp("bad_input")
    fx = {"run": root / "fixtures" / "run", "unfinished": root / "fixtures" / "unfinished"}
    todo = {name: case for name, case in CASES.items() if name not in SKIP}
    before: dict[str, tuple] = {}

    def start(name: str) -> Callable[[], Started]:
        return lambda: _start_case(todo[name], name, root / "cases" / name, fx, before)

    # the training run first, beside the cases that do not need its checkpoints; then the others
    training = Started("cnn-train", *TINY, f"hydra.run.dir={fx['run']}", cwd=root, env=ENV, fork=False)
    procs = run_side_by_side({name: start(name) for name, case in todo.items() if not case.needs_run})
    trained = training.result()
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (fx["run"] / "checkpoints" / "best.pt").is_file()
    _make_unfinished(fx["run"], fx["unfinished"])
    procs |= run_side_by_side({name: start(name) for name, case in todo.items() if case.needs_run})
    done = {name: Result(proc, before[name][0], snapshot(root / "cases" / name), before[name][1],
                         hashes(root / "cases" / name)) for name, proc in procs.items()}
    locked = root / "cases" / "dataset_root_unreadable" / "locked"
    if locked.exists():  # let the tmp folder's clean-up in
        locked.chmod(0o755)
    return done


def _params():
    for name, case in CASES.items():
        marks = []
        if name in SKIP:
            marks.append(pytest.mark.skip(reason=SKIP[name]))
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_bad_input_is_one_line_with_the_fix_and_writes_nothing(results: dict[str, Result], name: str) -> None:
    case, result = CASES[name], results[name]
    print(f"{case.tool} {' '.join(case.args)}\n{result.proc.stderr}")  # shown with -rP: the catalogue of messages
    line = one_error_line(result.proc)
    for part in case.expect:
        assert part in line, (part, line)
    for part in case.reject:
        assert part not in line, (part, line)
    assert result.after == result.before, {
        "new or changed": sorted(k for k in result.after if result.after[k] != result.before.get(k)),
        "gone": sorted(k for k in result.before if k not in result.after)}
    assert result.hashes_after == result.hashes_before
