"""Config schemas: Hydra checks every key and type against these while it composes, so a
misspelt key or a wrong type stops the command before anything runs.

The YAML files keep the values and their comments; the dataclasses here hold only the
types (MISSING: the YAML gives the value). Optimizer and scheduler schemas are read off
the torch class's own signature, so every PyTorch argument can be set and none invented.
Range checks (epochs >= 1, 0 <= label_smoothing < 1, ...) follow in `check_ranges`.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from dataclasses import dataclass, field, fields, make_dataclass
from importlib import resources
from typing import Any, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig

from cnn_cli import bounds, optim, stopping
from cnn_cli.builder import check_norm
from cnn_cli.errors import UserError


@dataclass
class EarlyStoppingSchema:
    patience: Optional[int] = MISSING
    monitor: str = MISSING
    min_delta: float = MISSING


@dataclass
class TrainerSchema:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    label_smoothing: float = MISSING
    grad_clip_norm: Optional[float] = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    deterministic: bool = MISSING
    num_threads: Any = MISSING  # auto | N | null
    log_every_n_steps: int = MISSING
    limit_train_batches: Optional[int] = MISSING
    limit_val_batches: Optional[int] = MISSING
    limit_test_batches: Optional[int] = MISSING
    progress: Any = MISSING  # auto | true | false
    log_histograms: bool = MISSING
    log_graph: bool = MISSING
    log_images: bool = MISSING
    checkpoints: bool = MISSING
    pictures_every_n_epochs: Optional[int] = MISSING
    sync_bn: bool = MISSING
    freeze: Any = None  # layer names, or 'up to NAME' (cnn_cli/transfer.py)
    pretrained_lr_scale: float = 1.0
    fit_to_data: bool = False  # batch size and epochs from the training set's size (cnn_cli/recipe.py)
    accumulate_grad_batches: int = MISSING
    ema_decay: Optional[float] = MISSING
    early_stopping: EarlyStoppingSchema = field(default_factory=lambda: EarlyStoppingSchema())
    overfit_batches: Optional[int] = MISSING
    profile_steps: Optional[int] = MISSING
    keep_run_folder: bool = MISSING
    tta: Optional[str] = None  # flip: validation and test score each image and its mirror image (cnn_cli/tta.py)


@dataclass
class AugmentSchema:
    crop_padding: int = MISSING
    flip: bool = MISSING
    # photo augmentation (cnn_cli/augment.py), off by default
    resized_crop_scale: Optional[List[float]] = None  # [smallest, largest] area fraction, e.g. [0.35, 1]
    resized_crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # width / height
    rotate: float = 0.0  # up to this many degrees either way
    translate: float = 0.0  # up to this fraction of the size either way
    brightness: float = 0.0  # factors in [1 - x, 1 + x]
    contrast: float = 0.0
    saturation: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) for the share; 0: off
    cutmix: float = 0.0


@dataclass
class DatasetSchema:
    name: str = MISSING
    source: str = MISSING
    root: Optional[str] = MISSING
    download: bool = MISSING
    fallback: bool = MISSING
    input_shape: Optional[List[int]] = MISSING  # null: dataset=imagefolder reads these four off the images
    num_classes: Optional[int] = MISSING
    classes: Optional[List[str]] = MISSING
    mean: Optional[List[float]] = MISSING  # null also for dataset=random (data.channel_stats)
    std: Optional[List[float]] = MISSING
    val_size: Any = MISSING  # a count; dataset=imagefolder also takes a fraction
    split_seed: int = MISSING
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    num_images: Optional[List[int]] = None  # source: random only: how many [train, test] images
    # dataset=imagefolder only (cnn_cli/imagefolder.py; configs/dataset/imagefolder.yaml says what each means)
    test_size: Any = 0
    resize: Optional[str] = None
    cache_dir: Optional[str] = None
    workers: Optional[int] = None
    max_memory_gb: Optional[float] = None
    skip_bad: bool = True
    samples: Optional[str] = None  # dataset=arrays only: uint8 or float32; null: what x_train holds


@dataclass
class TrainSchema:
    model: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    name: str = MISSING
    seed: int = MISSING
    resume: Optional[str] = MISSING
    init_from: Optional[str] = MISSING


@dataclass
class EvalDatasetSchema:
    fallback: bool = MISSING  # the bundled sample in place of missing MNIST files: only when asked


@dataclass
class EvalSchema:
    checkpoint: str = MISSING
    dataset: EvalDatasetSchema = field(default_factory=EvalDatasetSchema)
    split: str = MISSING
    fuse_bn: bool = MISSING
    root: Optional[str] = MISSING
    device: str = MISSING
    precision: Optional[str] = MISSING
    batch_size: Optional[int] = MISSING


@dataclass
class PredictSchema:
    checkpoint: str = MISSING
    inputs: Any = MISSING  # one path or a list of them
    top_k: int = MISSING
    output: Optional[str] = MISSING
    device: str = MISSING
    batch_size: Optional[int] = MISSING


@dataclass
class ExportSchema:
    checkpoint: str = MISSING
    format: str = MISSING
    output: Optional[str] = MISSING
    fuse_bn: bool = MISSING
    preprocess: bool = MISSING
    any_size: bool = MISSING
    opset: Optional[int] = MISSING
    root: Optional[str] = MISSING
    verify_inputs: Optional[str] = MISSING


_SIMPLE_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def signature_schema(cls: type, extra: list[tuple[str, Any, Any]] = ()) -> type:
    """A dataclass with the class's `name` and one typed field per keyword argument
    (PyTorch's defaults) after its first positional argument, plus `extra` fields."""
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=cls.__name__))]
    for p in optim.arguments(cls):
        kind = _field_type(p.annotation)
        if p.default is inspect.Parameter.empty:
            default = None if p.name == optim.LENGTH_KEYS.get(cls.__name__) else MISSING
        else:
            default = p.default
        if default is None:
            kind = Optional[kind]
        fields.append((p.name, kind, field(default=default)))
    fields += [(name, kind, field(default=default)) for name, kind, default in extra]
    return make_dataclass(f"{cls.__name__}Schema", fields)


def _field_type(annotation: Any) -> Any:
    """float | Tensor -> float, bool | None -> bool, anything richer (tuples, unions) -> Any."""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    parts = {part.strip() for part in text.split("|")} - {"None", "Tensor", "torch.Tensor"}
    return _SIMPLE_TYPES.get(parts.pop(), Any) if len(parts) == 1 else Any


def register() -> None:
    """Put the schemas in Hydra's ConfigStore; the YAML files name them in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="eval_schema", node=EvalSchema)
    cs.store(name="predict_schema", node=PredictSchema)
    cs.store(name="export_schema", node=ExportSchema)
    cs.store(group="schema", name="trainer", node=TrainerSchema)
    cs.store(group="schema", name="dataset", node=DatasetSchema)
    for group, classes, extra in (("optimizer", optim.OPTIMIZERS, lambda cls: []),
                                  ("scheduler", optim.SCHEDULERS, _scheduler_keys)):
        shipped = {_class_named(f.read_text()) for f in resources.files("cnn_cli.configs").joinpath(group).iterdir()
                   if f.name.endswith(".yaml")}
        for name, cls in classes.items():  # every torch.optim class, for configs of your own too
            node = signature_schema(cls, extra(cls))
            cs.store(group=f"schema/{group}", name=name, node=node)
            if name not in shipped:  # optimizer=radam, scheduler=exponentiallr: the schema, PyTorch's defaults
                cs.store(group=group, name=name.lower(), node={"defaults": [f"/schema/{group}/{name}@_here_"]})


def _class_named(text: str) -> str | None:
    """A shipped optimizer or scheduler file's top-level `name:`, found without parsing the YAML
    (which, for every file at every start, costs more than the rest of registering)."""
    found = re.search(r"^name:\s*(\w+)", text, re.MULTILINE)
    return found.group(1) if found else None


def _scheduler_keys(cls: type) -> list[tuple[str, Any, Any]]:
    monitor = [("monitor", str, "val_loss")] if cls is torch.optim.lr_scheduler.ReduceLROnPlateau else []
    return optim.SCHEDULER_KEYS + monitor


def check(cfg: DictConfig) -> None:
    """What composing cannot catch: keys added with `+` that nothing reads, and values a
    type cannot rule out (counts below 1, fractions outside [0, 1), ...); the dataset's
    own checks are data.check's, run when a run resolves its dataset (cnn-summary too). Pure:
    it reads no file."""
    check_norm(cfg.model)
    _finite(cfg, "")
    bounds.check_seed("seed", cfg.seed)
    for node, schema, prefix in ((cfg.trainer, TrainerSchema, "trainer"), (cfg.dataset, DatasetSchema, "dataset"),
                                 (cfg.dataset.augment, AugmentSchema, "dataset.augment"),
                                 (cfg.trainer.early_stopping, EarlyStoppingSchema, "trainer.early_stopping")):
        _no_unknown_keys(node, schema, prefix)
    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every_n_steps", "accumulate_grad_batches"):
        _at_least(f"trainer.{key}", trainer[key], 1)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "pictures_every_n_epochs",
                "overfit_batches", "profile_steps"):
        if trainer[key] is not None:
            _at_least(f"trainer.{key}", trainer[key], 1, " (or null)")
    threads = trainer.num_threads
    if not (threads in (None, "auto") or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)):
        raise UserError(f"trainer.num_threads={threads}: choose auto (fit the free cores), a count >= 1, or null "
                        "(PyTorch's choice)")
    if not (isinstance(trainer.progress, bool) or trainer.progress == "auto"):
        raise UserError(f"trainer.progress={trainer.progress}: choose auto (bars on a terminal only), true or false")
    if not 0 <= trainer.label_smoothing < 1:
        raise UserError(f"trainer.label_smoothing={trainer.label_smoothing} must be in [0, 1), e.g. 0.1")
    if not trainer.pretrained_lr_scale > 0:
        raise UserError(f"trainer.pretrained_lr_scale={trainer.pretrained_lr_scale} must be > 0, e.g. 0.1 (pretrained "
                        "layers learn at a tenth of optimizer.lr)")
    if trainer.grad_clip_norm is not None and not trainer.grad_clip_norm > 0:
        raise UserError(f"trainer.grad_clip_norm={trainer.grad_clip_norm} must be > 0 (or null for no clipping)")
    _check_ema_and_early_stopping(trainer, cfg.dataset.val_size)
    optim.check(cfg, trainer.epochs)
    if cfg.dataset.val_size == 0 and cfg.scheduler.get("monitor"):
        raise UserError(f"scheduler.monitor={cfg.scheduler.monitor} watches the validation split, but "
                        "dataset.val_size=0 holds none out; use another scheduler or dataset.val_size > 0")


def _check_ema_and_early_stopping(trainer: DictConfig, val_size: Any) -> None:
    if trainer.ema_decay is not None and not 0 < trainer.ema_decay < 1:
        raise UserError(f"trainer.ema_decay={trainer.ema_decay} must be between 0 and 1, e.g. 0.999 (or null: off)")
    stop = trainer.early_stopping
    if stop.monitor not in stopping.MONITORS:
        raise UserError(f"trainer.early_stopping.monitor={stop.monitor}: choose {' or '.join(stopping.MONITORS)}")
    if stop.min_delta < 0:
        raise UserError(f"trainer.early_stopping.min_delta={stop.min_delta} must be >= 0, e.g. 0.001")
    if stop.patience is None:
        return
    _at_least("trainer.early_stopping.patience", stop.patience, 1, " (or null: off)")
    if val_size == 0:
        raise UserError("trainer.early_stopping watches the validation split, but dataset.val_size=0 holds none "
                        "out; set dataset.val_size > 0 or trainer.early_stopping.patience=null")


def _finite(node: Any, key: str) -> None:
    """inf and nan are floats YAML accepts; no setting of ours means them."""
    if isinstance(node, DictConfig):
        for name in node:
            _finite(node[name], f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            _finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{key}={node}: must be a finite number")


def _no_unknown_keys(node: DictConfig, schema: type, prefix: str) -> None:
    known = [f.name for f in fields(schema)]
    for key in node:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}.{near[0]}?" if near else f"valid keys: {', '.join(known)}"
            raise UserError(f"{prefix}.{key}: no such key, nothing would read it; {hint}")


def _at_least(key: str, value: int, low: int, hint: str = "") -> None:
    if value < low:
        raise UserError(f"{key}={value} must be >= {low}{hint}")
