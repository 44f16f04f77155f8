"""The preprocessing contract: how a file becomes a model's input, written down once per model
(what timm calls `pretrained_cfg`).

It is a pure function of the dataset config a checkpoint records, so every checkpoint, old
ones too, carries it; cnn-predict implements exactly it, and cnn-export writes it into the
exported file and beside it (NAME.preprocess.json), where any client can read it. A contract
read from a file is someone else's data: `parse` bounds its size and checks every field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cnn_cli import bounds, data as data_mod, sources
from cnn_cli.errors import UserError

VERSION = 1
LAYOUTS = {2: "NCL", 3: "NCHW", 4: "NCDHW"}  # by the rank of one sample
MAX_BYTES = 8 * 1024 * 1024  # 100,000 class names fit; a larger sidecar is refused unread
MAX_SIZE = 65_536  # per axis of one sample
DECODE = ("Pillow: EXIF orientation applied, palette expanded, alpha dropped, 16-bit pixels shifted to 8 (>> 8), "
          "JPEG decoded at full scale (no draft mode)")
RESIZED = {  # how each policy brings an image of another size to input_shape's H x W (Pillow, images._fit)
    "none": "no resize: an image of another size is refused",
    "stretch": "resized to W x H, aspect ratio not kept",
    "shorter_side_then_center_crop": "scaled by max(H / height, W / width), each side max(1, round(side * scale))",
    "pad": "scaled by min(H / height, W / width), each side max(1, round(side * scale))",
}
CROPS = {"none": "none", "stretch": "none",
         "shorter_side_then_center_crop": "center: the H x W window at ((scaled - size) // 2) on each axis",
         "pad": "none: pasted on black (0) at ((size - scaled) // 2) on each axis"}


def of(dataset: DictConfig) -> dict[str, Any]:
    """The contract of a (resolved) dataset config, as a checkpoint records it."""
    shape = [int(s) for s in dataset.input_shape]
    floats = sources.of(dataset).stores_floats(dataset)
    mean, std = data_mod.channel_stats(dataset)
    image = len(shape) == 3 and shape[0] in (1, 3) and not floats
    policy = dataset.get("resize") or "none"
    return {
        "contract_version": VERSION,
        "dataset": str(dataset.name), "source": str(dataset.source),
        "input_shape": shape, "layout": LAYOUTS[len(shape)], "samples": "float32" if floats else "uint8",
        "decode": DECODE if image else None,
        "color": ("L" if shape[0] == 1 else "RGB") if image else None,
        "resize": {"policy": policy, "how": RESIZED[policy], "interpolation": "bilinear", "antialias": True,
                   "library": "Pillow Image.resize"} if image else None,
        "crop": CROPS[policy] if image else None,
        "scale": 1.0 if floats else 1 / 255,
        "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "classes": [str(c) for c in dataset.classes],
    }


def describe(contract: dict[str, Any]) -> str:
    """One line, for a person: 3x32x32 RGB, resize shorter_side_then_center_crop (bilinear, antialiased), ..."""
    shape = "x".join(map(str, contract["input_shape"]))
    if contract["color"] is None:
        scaled = "x / 255" if contract["samples"] == "uint8" else "x"
        return f"{shape} {contract['samples']} samples, ({scaled} - mean) / std"
    resize = contract["resize"]["policy"]
    return (f"{shape} {contract['color']}, resize {resize}" + " (bilinear, antialiased)" * (resize != "none")
            + ", (pixel / 255 - mean) / std, N x C x H x W")


def parse(text: bytes, where: str) -> dict[str, Any]:
    """A contract read from a file (a sidecar, or an exported file's metadata), checked field by
    field; anything else is one error naming `where` and the field."""
    def bad(what: str) -> UserError:
        return UserError(f"{where}: {what}; it is not a preprocessing contract cnn-export wrote: export the model "
                         "again with cnn-export")

    if len(text) > MAX_BYTES:
        raise bad(f"larger than any contract ({MAX_BYTES:,} bytes)")
    try:
        value = json.loads(text, parse_constant=lambda name: _raise(ValueError(f"{name} is not a number")))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise bad(f"not valid JSON ({str(err)[:80]})") from None
    if not isinstance(value, dict):
        raise bad("not a JSON object")
    if value.get("contract_version") != VERSION:
        raise bad(f"contract_version is {_short(value.get('contract_version'))}, not {VERSION}")
    shape = value.get("input_shape")
    if not (isinstance(shape, list) and 2 <= len(shape) <= 4 and all(_int(s, 1, MAX_SIZE) for s in shape)):
        raise bad(f"input_shape is {_short(shape)}, not 2 to 4 sizes from 1 to {MAX_SIZE}")
    image = value.get("color") is not None
    expected = {"layout": LAYOUTS[len(shape)], "samples": value.get("samples") if value.get("samples") in
                ("uint8", "float32") else "uint8 or float32"}
    for key, want in expected.items():
        if value.get(key) != want:
            raise bad(f"{key} is {_short(value.get(key))}, not {want}")
    if image:
        if value["color"] != {1: "L", 3: "RGB"}.get(shape[0]) or len(shape) != 3 or value["samples"] != "uint8":
            raise bad(f"color {_short(value['color'])} does not fit input_shape {shape} of {value['samples']}")
        resize = value.get("resize")
        if not (isinstance(resize, dict) and resize.get("policy") in RESIZED and resize.get("interpolation") ==
                "bilinear" and resize.get("antialias") is True):
            raise bad(f"resize is {_short(resize)}, not a policy ({', '.join(RESIZED)}) with bilinear, antialiased "
                      "interpolation")
    elif value.get("resize") is not None:
        raise bad("resize is given but color is not: only images are resized")
    scale = value.get("scale")
    if not (_number(scale) and scale > 0):
        raise bad(f"scale is {_short(scale)}, not a number > 0")
    for key in ("mean", "std"):
        values = value.get(key)
        if not (isinstance(values, list) and len(values) == shape[0] and all(map(_number, values))):
            raise bad(f"{key} is {_short(values)}, not {shape[0]} numbers (one per channel)")
    if min(value["std"]) <= 0:
        raise bad("std holds a value <= 0")
    classes = value.get("classes")
    if not (isinstance(classes, list) and 2 <= len(classes) <= bounds.MAX_CLASSES
            and all(isinstance(c, str) and len(c) <= 1000 for c in classes)):
        raise bad(f"classes is {_short(classes)}, not 2 to {bounds.MAX_CLASSES:,} names")
    return value


def _raise(err: Exception):
    raise err


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sidecar(model_file: Path) -> Path:
    """best.onnx -> best.onnx.preprocess.json (the whole name: best.onnx and best.pt2 may lie side by side)."""
    return model_file.with_name(model_file.name + ".preprocess.json")


def decode_shape(contract: dict[str, Any]) -> tuple[tuple[int, ...], str | None]:
    """What images.decode takes to implement the contract: the sample shape and resize policy."""
    resize = contract["resize"]
    return tuple(contract["input_shape"]), None if resize is None or resize["policy"] == "none" else resize["policy"]
