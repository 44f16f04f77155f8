"""An exported file (ONNX, TorchScript, .pt2) run as cnn-predict runs a checkpoint: with the
preprocessing contract cnn-export wrote beside it, checked against the file before use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from cnn_cli import anysize, contract, data as data_mod, tta
from cnn_cli.errors import UserError, first_line

SUFFIXES = (".onnx", ".pt2")  # always exported files; a .pt is one when its sidecar lies beside it


def is_exported(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES or contract.sidecar(path).is_file()


def load(path: Path) -> tuple[dict[str, Any], Callable[[Tensor], Tensor]]:
    """The file's contract (from its sidecar) and a function from raw samples, as the contract's
    decode gives them (N x C x ..., uint8 or float32), to logits."""
    from cnn_cli.export import FORMATS, require_onnx

    if not path.is_file():
        raise UserError(f"checkpoint={path}: no such file; give a checkpoint or a file cnn-export wrote")
    side = contract.sidecar(path)
    if not side.is_file():
        raise UserError(f"checkpoint={path}: its preprocessing contract {side.name} is not beside it; cnn-export "
                        "writes it with the model: copy it along, or export again")
    with open(side, "rb") as f:
        spec = contract.parse(f.read(contract.MAX_BYTES + 1), str(side))
    info = spec.get("file")
    steps = info.get("in_model") if isinstance(info, dict) else None
    if not (isinstance(info, dict) and info.get("format") in FORMATS and isinstance(steps, list)
            and all(step in anysize.STEPS for step in steps) and info.get("tta") in (None, *tta.CHOICES)):
        raise UserError(f"{side}: file is {json.dumps(info)[:80]}, not the exported file's format "
                        f"({', '.join(FORMATS)}), the steps it does itself and its test-time augmentation (tta); "
                        "export the model again with cnn-export")
    fmt = FORMATS[info["format"]]
    if info["format"] == "onnx":
        require_onnx()
    try:
        run, embedded = fmt.load(path), fmt.embedded(path)
        if "resize" in steps:  # it takes one image at a time; given the contract's size, its resize keeps it
            run = anysize.per_image(run)
    except Exception as err:  # each runtime raises its own kinds
        raise UserError(f"checkpoint={path}: does not load as {info['format']} ({first_line(err)[:160]}), as its "
                        f"{side.name} says it is") from None
    if embedded is not None and contract.parse(embedded, f"{path} (its metadata)") != spec:
        raise UserError(f"{side}: it disagrees with the contract written inside {path.name}; one of them was edited "
                        "or comes from another export: export the model again")
    normalized = "normalize" in info["in_model"]
    mean, std = spec["mean"], spec["std"]

    def logits(raw: Tensor) -> Tensor:
        with torch.inference_mode():
            return run(raw if normalized else data_mod.normalize(raw, mean, std)).float()

    _check_fits(path, side, spec, logits)
    return spec, logits


def _check_fits(path: Path, side: Path, spec: dict[str, Any], logits: Callable[[Tensor], Tensor]) -> None:
    """One sample of the contract's shape and type in, one score per class out: or one line."""
    dtype = torch.uint8 if spec["samples"] == "uint8" else torch.float32
    try:
        out = logits(torch.zeros((1, *spec["input_shape"]), dtype=dtype))
    except Exception as err:  # the runtime's own complaint about the input
        raise UserError(f"{side}: the model in {path.name} does not take the contract's input ({spec['samples']} "
                        f"1 x {' x '.join(map(str, spec['input_shape']))}): {first_line(err)[:160]}") from None
    if tuple(out.shape) != (1, len(spec["classes"])):
        raise UserError(f"{side}: the model in {path.name} gives {list(out.shape)} scores for one input but the "
                        f"contract names {len(spec['classes'])} classes; export the model again")
