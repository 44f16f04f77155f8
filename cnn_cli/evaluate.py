"""Evaluation: one pass over a split in eval mode; cnn-eval."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from cnn_cli import data as data_mod, distributed, files, runtime, sources, tta as tta_mod
from cnn_cli.data import Data, Split
from cnn_cli.errors import DataMissing, UserError
from cnn_cli.fuse import fuse_batchnorm
from cnn_cli.trained import load_trained

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    predictions: Tensor  # (N,) on the CPU, in the split's order
    labels: Tensor

    def confusion(self, num_classes: int) -> Tensor:
        """Rows are true classes, columns predicted classes."""
        flat = self.labels * num_classes + self.predictions
        return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def evaluate(model: nn.Module, data: Data, split: Split, batch_size: int, limit: int | None = None,
             amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             memory_format: torch.memory_format = torch.contiguous_format, *, tta: str | None) -> EvalResult:
    """Mean loss and accuracy over the split (or its first `limit` batches), in eval mode so
    batchnorm uses and keeps its running statistics. Under torchrun each process passes its
    shard; loss and accuracy are then over all shards, the predictions this shard's. `tta` is
    the run's trainer.tta, a required keyword: validation, the test and cnn-eval score alike."""
    was_training = model.training
    model = tta_mod.wrap(model, tta)
    model.eval()
    losses, preds, labels = [], [], []  # kept on the device and read once: no wait on a GPU each batch
    with torch.inference_mode():
        for images, targets in data_mod.eval_batches(data, split, batch_size, limit):
            images = images.contiguous(memory_format=memory_format)
            with amp():
                logits = model(images)
            losses.append(F.cross_entropy(logits.float(), targets, reduction="sum"))
            preds.append(logits.argmax(1))
            labels.append(targets)
    model.train(was_training)
    loss_sum = sum(torch.stack(losses).tolist())  # each batch's sum as a Python float, added in order
    predictions, labels_all = torch.cat(preds).cpu(), torch.cat(labels).cpu()
    correct = (predictions == labels_all).sum().item()
    loss_sum, correct, n = distributed.sum_over_ranks([loss_sum, correct, len(labels_all)], split.labels.device)
    return EvalResult(loss_sum / n, correct / n, predictions, labels_all)


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """cnn-eval: rebuild the checkpoint's model from its own config, evaluate one split,
    print and save loss, accuracy, per-class accuracy and the confusion matrix."""
    trained = load_trained(cfg.checkpoint)
    path, train_cfg, model = trained.path, trained.config, trained.model  # the JSON report goes beside path
    source = sources.of(train_cfg.dataset)
    _data_from_root(source, train_cfg.dataset, cfg.root, cfg.dataset.fallback)
    if cfg.split not in ("test", "val"):
        raise UserError(f"split={cfg.split}: choose test or val")
    device = runtime.resolve_device(cfg.device)
    precision = _precision(cfg.precision, train_cfg.trainer.precision, device)
    # the run's own batch size, precision and memory format: the same numbers, to the last digit
    memory_format = runtime.memory_format(train_cfg.trainer.channels_last, len(train_cfg.dataset.input_shape))
    runtime.to_memory_format(model.to(device), memory_format)
    recorded_name = str(train_cfg.dataset.name)
    try:
        data = data_mod.load(train_cfg.dataset, device)
    except DataMissing as missing:
        raise UserError(_not_found(recorded_name, source, cfg.root, missing)) from None
    split = data.test if cfg.split == "test" else data.val
    if not len(split):
        raise UserError("split=val: this run held out no validation split (dataset.val_size=0); use split=test")
    if path != Path(cfg.checkpoint).expanduser():  # said once every input is known to be good
        log.info("evaluating %s", path)
    batch_size = cfg.batch_size or train_cfg.trainer.eval_batch_size
    amp = functools.partial(runtime.autocast, device, precision)
    tta = trained.tta  # as the run validated and tested
    result = evaluate(model, data, split, batch_size, amp=amp, memory_format=memory_format, tta=tta)
    classes = list(train_cfg.dataset.classes)
    matrix = result.confusion(len(classes))
    fallback = data.fallback
    recorded = recorded_accuracy(path, cfg.split)
    report: dict[str, Any] = {
        "checkpoint": str(path), "split": cfg.split, "dataset": data.name,
        "test_set": {"name": data.name, "split": cfg.split, "count": len(split), "read_from": data.where,
                     "fallback": fallback},
        "loss": result.loss, "accuracy": result.accuracy, "recorded_accuracy": recorded,
        "per_class_accuracy": dict(zip(classes, _per_class(matrix))), "confusion_matrix": matrix.tolist(),
    }
    swapped = (f" (dataset.fallback=true: the bundled sample, NOT the test set of the checkpoint's dataset "
               f"'{recorded_name}')") if fallback else ""
    log.info("evaluated on %s %s: %d images read from %s%s", data.name, cfg.split, len(split), data.where, swapped)
    log.info("%s: loss %.4f, accuracy %.4f; %s", train_cfg.model.name, result.loss, result.accuracy,
             f"the run recorded {recorded:.4f} on its own {recorded_name} {cfg.split} set" if recorded is not None
             else "no accuracy recorded by the run beside this checkpoint (its metrics.json is for best.pt)")
    log.info("%s", _format_confusion(matrix, classes))
    if cfg.fuse_bn:
        fused = fuse_batchnorm(model)
        fused_result = evaluate(fused, data, split, batch_size, amp=amp, memory_format=memory_format, tta=tta)
        report["fuse_bn"] = {"max_abs_logit_difference": _max_difference(model, fused, data, split, batch_size),
                             "accuracy": fused_result.accuracy,
                             "same_predictions": bool(torch.equal(fused_result.predictions, result.predictions))}
        log.info("batchnorm folded into the preceding layers: accuracy %.4f, largest logit difference %.2e",
                 fused_result.accuracy, report["fuse_bn"]["max_abs_logit_difference"])
    out = path.with_name(f"{path.stem}.eval-{cfg.split}.json")
    try:
        files.write_text(out, json.dumps(report, indent=2) + "\n")
        log.info("written %s", out)
    except UserError as err:  # a read-only folder: the report above is the result
        log.warning("note: the report was not saved (%s)", str(err).split(";")[0])
    return report


def _data_from_root(source: sources.Source, dataset: DictConfig, root: str | None, fallback: bool) -> None:
    """Point the run's dataset config at root= (default data/): the data is looked for
    there, never where the checkpoint's author kept it, and not downloaded; the bundled
    sample stands in for missing MNIST only when this evaluation asks (dataset.fallback=true),
    whatever the run did."""
    dataset.fallback = fallback
    if source.own_files:
        if not root:
            raise UserError(f"the run trained on {source.own_files}")
        dataset.cache_dir = None  # an image cache goes in DIR or the user's cache folder, as for training
    dataset.root = root or "data"
    dataset.download = False


def _not_found(name: str, source: sources.Source, root: str | None, missing: DataMissing) -> str:
    """One line: the recorded dataset, where it was looked for, and the two ways on."""
    where = f"root={root}" if root else "data/ (root= not given)"
    instead = (", or dataset.fallback=true to evaluate on the bundled 1,000-digit MNIST sample instead (another test "
               "set, and the report says so)") if source.falls_back else ""
    return (f"the checkpoint's dataset '{name}' is not in {where}: looked in {missing.looked_in}; give the folder "
            f"that holds it with root=DIR{instead}")


METRICS_LIMIT = 16 * 1024 * 1024  # a run's metrics.json is kilobytes; a larger one is not read


def recorded_accuracy(path: Path, split: str) -> float | None:
    """The accuracy the checkpoint's run recorded for `split` (metrics.json's test_acc or
    best_val_acc), which are best.pt's; None for another checkpoint or a record that is
    missing or not what cnn-train writes (it came with the checkpoint: data, checked)."""
    metrics = path.parent.parent / "metrics.json"
    if path.name != "best.pt" or path.parent.name != "checkpoints" or not metrics.is_file():
        return None
    try:
        if metrics.stat().st_size > METRICS_LIMIT:
            return None
        value = json.loads(metrics.read_text()).get("test_acc" if split == "test" else "best_val_acc")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return None
    return float(value)


def _precision(asked: str | None, run_precision: str, device: torch.device) -> str:
    """precision= if given (an error if the device cannot run it), else the run's own, else float32."""
    try:
        return runtime.check_precision(asked or run_precision, device)
    except UserError:
        if asked:
            raise
        log.info("the run's precision %s is not available on %s: evaluating in float32", run_precision, device.type)
        return "32"


def _max_difference(model: nn.Module, other: nn.Module, data: Data, split: Split, batch_size: int) -> float:
    model.eval()
    other.eval()
    worst = 0.0
    with torch.inference_mode():
        for images, _ in data_mod.eval_batches(data, split, batch_size):
            worst = max(worst, (model(images) - other(images)).abs().max().item())
    return worst


def _format_confusion(matrix: Tensor, classes: list[str]) -> str:
    """The confusion matrix with per-class accuracy: rows true, columns predicted."""
    names = [c[:10] for c in classes]
    width = max(6, len(str(int(matrix.max()))) + 1, *(len(n) + 1 for n in names))
    lines = ["true \\ predicted".ljust(12) + "".join(n.rjust(width) for n in names) + "  accuracy".rjust(width + 2)]
    for name, row, acc in zip(names, matrix.tolist(), _per_class(matrix)):
        lines.append(name.ljust(12) + "".join(str(v).rjust(width) for v in row) + f"{acc:.4f}".rjust(width + 2))
    return "\n".join(lines)


def _per_class(matrix: Tensor) -> list[float]:
    """Accuracy of each true class: the diagonal over the row sums."""
    return (matrix.diag() / matrix.sum(1).clamp(min=1)).tolist()
