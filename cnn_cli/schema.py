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
from dataclasses import dataclass, field, fields, make_dataclass
from importlib import resources
from typing import Any, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from cnn_cli import data, optim
from cnn_cli.builder import check_norm
from cnn_cli.errors import UserError


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
    num_threads: Optional[int] = MISSING
    log_every_n_steps: int = MISSING
    limit_train_batches: Optional[int] = MISSING
    limit_val_batches: Optional[int] = MISSING
    progress: Any = MISSING  # auto | true | false
    log_histograms: bool = MISSING
    sync_bn: bool = MISSING


@dataclass
class AugmentSchema:
    crop_padding: int = MISSING
    flip: bool = MISSING


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


@dataclass
class TrainSchema:
    model: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
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
        shipped = {OmegaConf.load(f).get("name") for f in resources.files("cnn_cli.configs").joinpath(group).iterdir()
                   if f.name.endswith(".yaml")}
        for name, cls in classes.items():  # every torch.optim class, for configs of your own too
            node = signature_schema(cls, extra(cls))
            cs.store(group=f"schema/{group}", name=name, node=node)
            if name not in shipped:  # optimizer=radam, scheduler=exponentiallr: the schema, PyTorch's defaults
                cs.store(group=group, name=name.lower(), node={"defaults": [f"/schema/{group}/{name}@_here_"]})


def _scheduler_keys(cls: type) -> list[tuple[str, Any, Any]]:
    monitor = [("monitor", str, "val_loss")] if cls is torch.optim.lr_scheduler.ReduceLROnPlateau else []
    return optim.SCHEDULER_KEYS + monitor


def check(cfg: DictConfig) -> None:
    """What composing cannot catch: keys added with `+` that nothing reads, and values a
    type cannot rule out (counts below 1, fractions outside [0, 1), ...); the dataset's
    own checks are data.check's, which cnn-summary runs too."""
    check_norm(cfg.model)
    _finite(cfg, "")
    for node, schema, prefix in ((cfg.trainer, TrainerSchema, "trainer"), (cfg.dataset, DatasetSchema, "dataset"),
                                 (cfg.dataset.augment, AugmentSchema, "dataset.augment")):
        _no_unknown_keys(node, schema, prefix)
    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every_n_steps"):
        _at_least(f"trainer.{key}", trainer[key], 1)
    for key in ("limit_train_batches", "limit_val_batches", "num_threads"):
        if trainer[key] is not None:
            _at_least(f"trainer.{key}", trainer[key], 1, " (or null)")
    if not (isinstance(trainer.progress, bool) or trainer.progress == "auto"):
        raise UserError(f"trainer.progress={trainer.progress}: choose auto (bars on a terminal only), true or false")
    if not 0 <= trainer.label_smoothing < 1:
        raise UserError(f"trainer.label_smoothing={trainer.label_smoothing} must be in [0, 1), e.g. 0.1")
    if trainer.grad_clip_norm is not None and not trainer.grad_clip_norm > 0:
        raise UserError(f"trainer.grad_clip_norm={trainer.grad_clip_norm} must be > 0 (or null for no clipping)")
    optim.check(cfg, trainer.epochs)
    data.resolve(cfg.dataset)
    if cfg.dataset.val_size == 0 and cfg.scheduler.get("monitor"):
        raise UserError(f"scheduler.monitor={cfg.scheduler.monitor} watches the validation split, but "
                        "dataset.val_size=0 holds none out; use another scheduler or dataset.val_size > 0")


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
