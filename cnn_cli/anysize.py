"""any_size=true: an ONNX or TorchScript file that takes one decoded image of any size (uint8
H x W x C) and does the contract's resize, crop or pad, scaling and normalisation itself, so a
client only decodes.

torch.export (and so torch's dynamo ONNX exporter) specialises the resized size to the example
image's (it guards on `round(h * scale) == 24`), so the resize is written here as ONNX nodes:
the sizes in double precision, rounded half to even as Python's `round` is (images._fit), then
Pillow's BILINEAR pass by pass (_resized), then the crop or pad; the result feeds the
preprocess=true graph (uint8 N x C x H x W), which scales and normalises. TorchScript gets the
same steps as a scripted module (Resized) around the traced model."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn_cli.errors import UserError

INPUT = "image"
MIN_OPSET = 18  # Resize's antialias attribute
STEPS = ["resize", "scale", "normalize"]
SPEC = f"{INPUT} (H x W x C, uint8, any H and W)"


def check(spec: dict[str, Any], cfg: Any) -> None:
    """any_size=true asks for what only an image model with a resize policy, exported to ONNX or
    TorchScript with preprocess=true, has: anything else is one line."""
    if cfg.format not in ("onnx", "torchscript"):
        raise UserError(f"any_size=true: format={cfg.format} cannot take images of any size (torch.export fixes a "
                        "crop's or pad's resized size to the example image's); use format=onnx or torchscript")
    if not cfg.preprocess:
        raise UserError("any_size=true takes raw pixels and needs preprocess=true; drop preprocess=false")
    if spec["color"] is None or spec["resize"]["policy"] == "none":
        raise UserError(f"any_size=true: the model's dataset {spec['dataset']} has no resize policy, so it takes "
                        f"{'x'.join(map(str, spec['input_shape']))} samples only; drop any_size")
    if cfg.opset is not None and cfg.opset < MIN_OPSET:
        raise UserError(f"any_size=true needs opset >= {MIN_OPSET} (Resize with antialias); opset={cfg.opset} "
                        "is older")


def prepend(model: Any, spec: dict[str, Any]) -> Any:
    """The ONNX model (taking uint8 `images` N x C x H x W) with the resize graph in front of it."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    opset = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise UserError(f"any_size=true needs opset >= {MIN_OPSET} (Resize with antialias); the exporter wrote "
                        f"opset {opset}: give opset={MIN_OPSET}")
    channels, height, width = spec["input_shape"]
    policy = spec["resize"]["policy"]
    consts: list[Any] = []

    def const(name: str, values: list, dtype: str) -> str:
        consts.append(numpy_helper.from_array(np.array(values, dtype=dtype), f"pre/{name}"))
        return f"pre/{name}"

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [f"pre/{out}"], **attrs))
        return f"pre/{out}"

    nodes: list[Any] = []
    target = const("target", [height, width], "int64")
    x = node("Unsqueeze", [node("Transpose", [node("Cast", [INPUT], "float", to=TensorProto.FLOAT)], "chw",
                                            perm=[2, 0, 1]), const("axis0", [0], "int64")], "nchw")
    zero, one, two = (const(name, [i], "int64") for i, name in enumerate(("zero", "one", "two")))
    hw_int = node("Slice", [node("Shape", [INPUT], "shape"), zero, two], "hw_int")
    if policy == "stretch":
        scaled = target
    else:  # images._fit: scale = max (crop) or min (pad) of H / h, W / w; each side max(1, round(side * scale))
        hw = node("Cast", [hw_int], "hw", to=TensorProto.DOUBLE)
        ratios = node("Div", [const("target_d", [height, width], "float64"), hw], "ratios")
        reduce = "ReduceMax" if policy == "shorter_side_then_center_crop" else "ReduceMin"
        scale = node(reduce, [ratios], "scale", keepdims=1)
        rounded = node("Max", [node("Round", [node("Mul", [hw, scale], "sides")], "rounded"),
                               const("one_d", [1.0], "float64")], "at_least_one")
        scaled = node("Cast", [rounded], "scaled", to=TensorProto.INT64)
    nc = const("nc", [1, channels], "int64")
    h, new_w = node("Slice", [hw_int, zero, one], "h"), node("Slice", [scaled, one, two], "new_w")
    along_width = node("Concat", [nc, h, new_w], "w_sizes", axis=0)
    y = _resized(node, const, x, along_width, "w")  # as Pillow: the rows first, rounded, then the columns
    y = _resized(node, const, y, node("Concat", [nc, scaled], "sizes", axis=0), "h")
    if policy == "shorter_side_then_center_crop":
        start = node("Div", [node("Sub", [scaled, target], "excess"), const("two_i", [2, 2], "int64")], "start")
        y = node("Slice", [y, start, node("Add", [start, target], "end"), const("axes", [2, 3], "int64")], "cropped")
    elif policy == "pad":
        room = node("Sub", [target, scaled], "room")
        before = node("Div", [room, const("two_i", [2, 2], "int64")], "before")
        pads = node("Concat", [before, node("Sub", [room, before], "after")], "pads", axis=0)
        y = node("Pad", [y, pads, const("black", 0.0, "float32"), const("axes", [2, 3], "int64")], "padded")
    nodes.append(helper.make_node("Cast", [y], ["pre/pixels"], to=TensorProto.UINT8))
    graph = helper.make_graph(
        nodes, "preprocess", [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["height", "width", channels])],
        [helper.make_tensor_value_info("pre/pixels", TensorProto.UINT8, [1, channels, height, width])],
        initializer=consts)
    pre = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=model.ir_version)
    merged = compose.merge_models(pre, model, io_map=[("pre/pixels", model.graph.input[0].name)])
    del merged.metadata_props[:]
    merged.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(merged)
    return merged


def _resized(node: Callable[..., str], const: Callable[..., str], x: str, sizes: str, axis: str) -> str:
    """One pass of Pillow's BILINEAR along one axis: a triangle filter widened by the shrink factor
    (antialias=1) over the pixels inside the image only (exclude_outside=1: with onnxruntime's
    default the border pixels of a shrunk image differ from Pillow's by up to 15 grey levels),
    rounded half up to 8 bits as Pillow rounds (Round would round half to even)."""
    y = node("Resize", [x, "", "", sizes], f"resized_{axis}", mode="linear", antialias=1, exclude_outside=1,
             coordinate_transformation_mode="half_pixel")
    half_up = node("Floor", [node("Add", [y, const(f"half_{axis}", 0.5, "float32")], f"plus_half_{axis}")],
                   f"rounded_{axis}")
    return node("Clip", [half_up, const(f"lo_{axis}", 0.0, "float32"), const(f"hi_{axis}", 255.0, "float32")],
                f"pixels_{axis}")


def per_image(run: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A file taking one H x W x C image, run on a batch N x C x H x W (as the contract's decode
    gives it) one image at a time."""
    return lambda batch: torch.cat([run(image.permute(1, 2, 0).contiguous()) for image in batch])


class Resized(nn.Module):
    """The ONNX graph's steps for TorchScript (scripted, so H and W stay free), in front of the traced
    model: sizes as images._fit computes them, Pillow's BILINEAR rows then columns, crop or pad."""

    def __init__(self, model: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.policy = model, spec["resize"]["policy"]
        self.height, self.width = spec["input_shape"][1:]

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[0], image.shape[1]
        height, width = self.height, self.width
        nh, nw = height, width
        if self.policy != "stretch":
            crop = self.policy == "shorter_side_then_center_crop"
            scale = max(height / h, width / w) if crop else min(height / h, width / w)
            nh, nw = max(1, _round_half_even(h * scale)), max(1, _round_half_even(w * scale))
        x = _pillow_pass(_pillow_pass(image.permute(2, 0, 1).unsqueeze(0).float(), [h, nw]), [nh, nw])
        if self.policy == "shorter_side_then_center_crop":
            top, left = (nh - height) // 2, (nw - width) // 2
            x = x[:, :, top:top + height, left:left + width]
        elif self.policy == "pad":
            top, left = (height - nh) // 2, (width - nw) // 2
            x = F.pad(x, [left, width - nw - left, top, height - nh - top])
        return self.model(x.to(torch.uint8))


def _round_half_even(value: float) -> int:
    """Python's round (TorchScript's rounds half away from zero)."""
    low = math.floor(value)
    rest = value - low
    return low + 1 if rest > 0.5 or (rest == 0.5 and low % 2 == 1) else low


def _pillow_pass(x: Tensor, size: list[int]) -> Tensor:
    """torch's antialiased bilinear is Pillow's filter; rounded half up to 8 bits as Pillow rounds."""
    return torch.floor(F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True) + 0.5
                       ).clamp(0, 255)
