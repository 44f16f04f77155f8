"""cnn-predict: classify image files (or .npy arrays of samples) with a checkpoint or an
exported file, each prepared exactly as the model's preprocessing contract says."""

from __future__ import annotations

import csv
import io
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torch import Tensor

from cnn_cli import contract, deployed, images, runtime, sources
from cnn_cli.errors import UserError, first_line, printable
from cnn_cli.files import output_file, write_text
from cnn_cli.trained import load_trained

NPY = ".npy"


def run_predict(cfg: DictConfig) -> int:
    """Print one line per sample (path, class, probability, then the next top_k - 1), write
    the CSV if asked; return how many files were skipped as unreadable."""
    device = runtime.resolve_device(cfg.device)
    spec, logits, run_batch_size = _open(Path(cfg.checkpoint).expanduser(), cfg.checkpoint, device)
    classes = spec["classes"]
    if not 1 <= cfg.top_k <= len(classes):
        raise UserError(f"top_k={cfg.top_k} must be between 1 and the number of classes ({len(classes)})")
    batch_size = run_batch_size if cfg.batch_size is None else cfg.batch_size
    if batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size} must be >= 1 (or null for the run's eval_batch_size)")
    output = output_file(cfg.output) if cfg.output else None
    files = expand(cfg.inputs)
    skipped: list[tuple[Path, str]] = []
    rows, inverted = [], 0
    shape, resize = contract.decode_shape(spec)
    samples = _samples(files, shape, spec["samples"] == "float32", skipped, resize)
    source = sources.named(spec["source"])
    for names, batch in _batches(samples, batch_size):
        if source is not None and source.light_on_dark:
            inverted += int((batch.flatten(1).float().mean(1) > 127).sum())
        probs = logits(batch).float().softmax(1)
        top = probs.topk(cfg.top_k, dim=1)
        for name, p, idx in zip(names, top.values.tolist(), top.indices.tolist()):
            row = [name, *(v for i, q in zip(idx, p) for v in (classes[i], f"{q:.6f}"))]
            print("\t".join(map(printable, row)))
            rows.append(row)
    for path, reason in skipped:
        print(printable(f"skipped {path}: not a readable image ({reason})"), file=sys.stderr)
    if inverted:
        print(f"note: {inverted} of {len(rows)} inputs look inverted (dark digit on a light background); the model "
              "was trained on MNIST, whose digits are light on dark: invert them first (PIL.ImageOps.invert)",
              file=sys.stderr)
    if output is not None:
        header = ["path", "prediction", "probability"]
        header += [f"{key}{k}" for k in range(2, cfg.top_k + 1) for key in ("top", "probability")]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([header, *([_inert(cell) for cell in row] for row in rows)])
        write_text(output, text.getvalue())
        print(f"written {output} ({len(rows)} predictions)", file=sys.stderr)
    return len(skipped)


def _inert(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading = + - @ (or tab, carriage return) would
    make a class or file named `=cmd|calc` a formula, so it gets a leading ' (OWASP's advice)."""
    return f"'{cell}" if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


EXPORTED_BATCH = 64  # an exported file records no batch size of its own


def _open(path: Path, given: str, device: torch.device) -> tuple[dict[str, Any], Callable[[Tensor], Tensor], int]:
    """The preprocessing contract, raw samples -> logits, and the batch size: of a checkpoint
    (its stored config) or of an exported file (its sidecar)."""
    if deployed.is_exported(path):
        spec, logits = deployed.load(path)
        return spec, lambda batch: logits(batch.cpu()), EXPORTED_BATCH
    trained = load_trained(given)
    model = trained.scoring().to(device)  # as cnn-eval scores it: with the run's trainer.tta

    def logits(batch: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(trained.normalize(batch.to(device)))

    return contract.of(trained.config.dataset), logits, trained.config.trainer.eval_batch_size


def expand(inputs: Any) -> list[Path]:
    """inputs= as files: folders expanded (recursively, sorted, image files only); a file
    named explicitly must be an image or a .npy array."""
    items = [inputs] if isinstance(inputs, str) else list(inputs) if isinstance(inputs, (list, ListConfig)) else []
    if not items:
        raise UserError("inputs is empty; give image files or folders, e.g. inputs=[photo.png,pictures/]")
    kinds = f"{', '.join(images.EXTENSIONS)} or {NPY}"
    files: list[Path] = []
    for item in map(str, items):
        path = Path(item).expanduser()
        if path.is_dir():
            found = images.image_files(path)
            if not found:
                raise UserError(f"inputs: the folder {item} holds no image files ({', '.join(images.EXTENSIONS)})")
            files += found
        elif not path.exists():
            raise UserError(f"inputs: {item} does not exist")
        elif not path.is_file():
            raise UserError(f"inputs: {item} is not a regular file or a folder")
        elif not (images.is_image(path) or path.suffix.lower() == NPY):
            raise UserError(f"inputs: {item} is not an image file nor an array of samples ({kinds})")
        else:
            files.append(path)
    return files


def _samples(files: list[Path], shape: tuple[int, ...], floats: bool,
             skipped: list[tuple[Path, str]], resize: str | None = None) -> Iterator[tuple[str, Tensor]]:
    """(name, raw sample) for every sample in the files, images resized by the training data's
    policy (dataset.resize); unreadable files go to `skipped`."""
    for path in files:
        try:
            if path.suffix.lower() == NPY:
                array = _read_npy(path, shape, floats)
                for i in range(len(array)):
                    sample = torch.from_numpy(np.array(array[i]))
                    yield f"{path}[{i}]", sample.float() if floats else sample
            else:
                yield str(path), images.decode(path, shape, resize)
        except images.Unreadable as err:
            skipped.append((path, str(err)))


def _read_npy(path: Path, shape: tuple[int, ...], floats: bool) -> np.ndarray:
    """N samples (N, *shape) or one (*shape), stored as the dataset stores them (uint8 pixels,
    or float32 readings where `floats`); memory-mapped, never unpickled."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise images.Unreadable(first_line(err)) from None
    if not isinstance(array, np.ndarray):
        raise images.Unreadable("an .npz archive, not one .npy array")
    if floats and array.dtype.kind != "f":
        raise UserError(f"{path} holds {array.dtype} values; the model was trained on float readings: give float32 "
                        "samples as the dataset stores them (the checkpoint's normalisation is applied here)")
    if not floats and array.dtype != np.uint8:
        raise UserError(f"{path} holds {array.dtype} values; give uint8 samples (0-255 pixels, as the dataset stores "
                        "them: the checkpoint's normalisation is applied here)")
    if tuple(array.shape) == shape:
        array = array[None]
    if tuple(array.shape[1:]) != shape:
        wanted = " x ".join(map(str, shape))
        raise UserError(f"{path} holds an array of shape {' x '.join(map(str, array.shape))}; the model takes "
                        f"N x {wanted} (or one {wanted} sample)")
    return array


def _batches(samples: Iterator[tuple[str, Tensor]], size: int) -> Iterator[tuple[Sequence[str], Tensor]]:
    while chunk := list(islice(samples, size)):
        names, batch = zip(*chunk)
        yield names, torch.stack(batch)
