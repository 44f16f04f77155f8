"""Model config -> nn.Sequential, with every shape checked and explained.

The builder walks the layer list with one sample's shape. Each catalogue layer (layers.py)
checks its arguments and infers its input size, its window is checked against the output-size
formula (geometry.py), and it runs on a tiny zero batch to learn its output shape; a table row
records output size, receptive field, activation memory, weight size, parameters and
multiply-accumulates. Two linear layers with nothing nonlinear between them are a warning:
together they are one linear layer.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cnn_cli import bounds
from cnn_cli.errors import UserError, first_line
from cnn_cli.geometry import Field, Shape, check_window, fmt_shape
from cnn_cli.layers import (BLOCKS, CATALOGUE, COMPOSITES, EXPANDING, SEPARATES, TRANSPARENT, LayerKind, Residual,
                             kind_of)

BYTES_PER_VALUE = 4  # float32 activations
# far beyond any real network, so that a config (or a shared checkpoint's) cannot make the
# builder loop, recurse or allocate without end
MAX_LAYERS = 10_000  # after repeats are expanded
MAX_NESTING = 20  # repeat, stage and residual blocks inside each other
MAX_PARAMS = 10_000_000_000  # 40 GB of float32 weights


@dataclass
class Row:
    """One line of the shape table."""

    name: str  # the child's path in the model, as in state_dict keys: conv1, res1.body.conv2
    label: str  # what the layer is: Conv2d (C_out=20, K=5, P=2, S=1)
    shape: Shape  # output shape of one sample
    weight: str = ""  # weight size, e.g. 20 x 1 x 5 x 5
    params: int = 0
    macs: int = 0  # multiply-accumulates per sample
    depth: int = 0  # nesting inside residual blocks
    receptive_field: Shape | None = None  # input positions one output value sees, per spatial axis
    memory: int = 0  # bytes of this layer's output per sample (float32)


@dataclass
class BuiltModel:
    """A built network and the explanation of its shapes."""

    model: nn.Sequential
    input_shape: Shape
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    receptive_field: Shape | None = None

    @property
    def output_shape(self) -> Shape:
        return self.rows[-1].shape if self.rows else self.input_shape

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def macs(self) -> int:
        return sum(row.macs for row in self.rows)

    @property
    def memory(self) -> int:
        """Bytes of the input and every layer's output for one sample (float32), as the lecture's
        AlexNet and VGG tables count them: what a forward pass keeps for backward."""
        return memory_bytes(self.input_shape) + sum(row.memory for row in self.rows)


def build_model(layers: Any, input_shape: Sequence[int], where: str = "model.layers") -> BuiltModel:
    """Build `layers` (a list of layer specs) for samples of `input_shape` (C, H, W)."""
    if isinstance(layers, (DictConfig, ListConfig)):
        layers = OmegaConf.to_container(layers, resolve=True)
    walk = _Walk()
    model = nn.Sequential()
    walk.add_all(model, Counter(), layers, tuple(input_shape), where, path="", depth=0)
    return BuiltModel(model, tuple(input_shape), walk.rows, walk.warnings, walk.field.size or None)


def check_norm(model: DictConfig) -> None:
    """A model config with `norms` (lenet5_bn) lets model.norm choose one; any other choice
    would surface as an interpolation error deep in its layers."""
    norms = model.get("norms")
    if not isinstance(norms, DictConfig) and "norm" in model:
        raise UserError(f"model.norm={model.get('norm')}: the model '{model.get('name')}' has no norm switch (no "
                        "`norms:` in its config), so it would be ignored; leave it out, or use a model that has "
                        "one (model=lenet5_bn)")
    if isinstance(norms, DictConfig) and model.get("norm") not in norms:
        raise UserError(f"model.norm={model.get('norm')}: the model '{model.get('name')}' offers "
                        f"{' | '.join(map(str, norms))}")


def build_from_config(cfg: DictConfig) -> BuiltModel:
    """Build cfg.model for cfg.dataset's input shape, checking it ends in one score per class.
    Its norm switch is checked before, with the rest of each command's config (check_norm: in
    schema.check for cnn-train, commands.summary, trained.load_trained)."""
    try:
        built = build_model(cfg.model.layers, cfg.dataset.input_shape)
    except UserError as err:
        raise UserError(f"{err}{_input_hint(cfg)}") from None
    classes = cfg.dataset.num_classes
    if built.output_shape != (classes,):
        raise UserError(
            f"model.layers: the model '{cfg.model.name}' ends with output {fmt_shape(built.output_shape)} but "
            f"dataset '{cfg.dataset.name}' has {classes} classes; end with "
            "`- linear: {out_features: ${dataset.num_classes}}`"
        )
    return built


def _input_hint(cfg: DictConfig) -> str:
    """A model config's `expects_input` (AlexNet's 3 x 227 x 227), said when the dataset's samples
    do not fit: a student's first `cnn-summary model=alexnet` meets MNIST's 1 x 28 x 28."""
    expects = cfg.model.get("expects_input")
    if not expects or list(expects) == list(cfg.dataset.input_shape):
        return ""
    shape = ",".join(map(str, expects))
    return (f". The model '{cfg.model.name}' is made for {fmt_shape(tuple(expects))} samples, not "
            f"{fmt_shape(tuple(cfg.dataset.input_shape))} ({cfg.dataset.name}): try "
            f"model={cfg.model.name} dataset=random dataset.input_shape=[{shape}]")


def _parse(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A spec is a layer name alone (`relu`) or a one-key mapping `{conv2d: {...}}`."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and len(spec) == 1 and isinstance(next(iter(spec)), str):
        (name, args), = spec.items()
        if args is None:
            return name, {}
        if isinstance(args, dict):
            return name, args
        raise UserError(f"{where} ({name}): arguments must be a mapping such as {{kernel_size: 3}}, got {args!r}")
    raise UserError(
        f"{where}: expected a layer name (relu) or a one-key mapping ({{conv2d: {{out_channels: 16, "
        f"kernel_size: 3}}}}), got {spec!r}"
    )


def _lookup(name: str, at: str) -> LayerKind:
    """A catalogue layer by name, also as PyTorch spells it (AdaptiveAvgPool2d) or with
    underscores (adaptive_avg_pool2d), as timm normalises names; never an import path."""
    key = name.lower().replace("_", "")
    if key in CATALOGUE:
        return CATALOGUE[key]
    known = sorted(CATALOGUE) + list(COMPOSITES)
    close = difflib.get_close_matches(name.lower(), known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "known layers: " + ", ".join(known)
    raise UserError(f"{at}: unknown layer '{name}'; {hint}")


def _count(value: Any, key: str, at: str, most: int = MAX_LAYERS) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise UserError(f"{at}: {key} must be a whole number from 1 to {most:,}, got {value!r}")
    return value


def _check_list(specs: Any, where: str) -> None:
    if not isinstance(specs, list) or not specs:
        raise UserError(f"{where} must be a non-empty list of layers, e.g. [{{conv2d: {{out_channels: 16, "
                        f"kernel_size: 3}}}}, relu]; got {specs!r}")
    if sum(where.count(f".{name}") for name in COMPOSITES) > MAX_NESTING:
        raise UserError(f"{where}: blocks nested more than {MAX_NESTING} deep; no network needs that many, "
                        "write the repeated part once with repeat: {times: N, layers: [...]}")


# A repeat or a stage stands for runs of plain layer specs, each walked with a note for
# error messages: (where the runs are, [(specs, note), ...]).
_Runs = tuple[str, list[tuple[list, str]]]


def _repeat(args: dict[str, Any], shape: Shape, at: str, where: str) -> _Runs:
    """repeat: {times: N, layers: [...]}: the layers N times over."""
    if set(args) != {"times", "layers"}:
        raise UserError(f"{at}: write repeat as {{times: N, layers: [...]}}, got keys {sorted(args)}")
    times = _count(args["times"], "times", at)
    return f"{where}.repeat.layers", [(args["layers"], f", repeat {r} of {times}" * (times > 1))
                                      for r in range(1, times + 1)]


def _stage(args: dict[str, Any], shape: Shape, at: str, where: str) -> _Runs:
    """stage: {block: basic, out_channels: 32, times: 3, stride: 2}: `times` blocks of one kind
    (layers.BLOCKS), the first with the stride, in one line as timm's byobnet states a stage.
    An inverted block (MobileNetV2) also takes `expand` (default 6)."""
    keys = {"block", "out_channels", "times", "stride", "expand"}
    if not {"block", "out_channels"} <= set(args) <= keys:
        raise UserError(f"{at}: write stage as {{block: {' | '.join(BLOCKS)}, out_channels: C, times: N, "
                        f"stride: S}} (times and stride default to 1; inverted also takes expand), got keys "
                        f"{sorted(args)}")
    if not isinstance(args["block"], str) or args["block"] not in BLOCKS:
        raise UserError(f"{at}: block must be one of {', '.join(BLOCKS)}, got {args['block']!r}")
    if "expand" in args and args["block"] not in EXPANDING:
        raise UserError(f"{at}: expand is for {' and '.join(EXPANDING)} blocks; a {args['block']} block has a "
                        "fixed shape, leave expand out")
    n = len(shape) - 1
    if n not in (1, 2, 3):
        raise UserError(f"{at}: a stage needs a map (C x L, C x H x W or C x D x H x W), but gets {fmt_shape(shape)}")
    make = BLOCKS[args["block"]]
    channels = _count(args["out_channels"], "out_channels", at, MAX_PARAMS)
    times, stride = _count(args.get("times", 1), "times", at), _count(args.get("stride", 1), "stride", at)
    extra = {"expand": _count(args["expand"], "expand", at, 64)} if "expand" in args else {}
    return f"{where}.stage", [(make(n, shape[0] if b == 1 else channels, channels, stride if b == 1 else 1, **extra),
                               f", block {b} of {times}") for b in range(1, times + 1)]


_EXPANDS = {"repeat": _repeat, "stage": _stage}


class _Walk:
    """State of one walk through a model config: the table so far, the receptive field, and
    the counts held against the limits."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.warnings: list[str] = []
        self.field = Field()
        # the last conv or linear layer with only transparent ones after it so far, to warn when
        # the next one composes with it: its name, module and the receptive field at its input
        self.weighted: tuple[str, nn.Module, Field | None] | None = None
        self.layers = 0  # built so far, against MAX_LAYERS
        self.params = 0  # against MAX_PARAMS

    def add_all(self, seq: nn.Sequential, counters: Counter, specs: Any, shape: Shape, where: str,
                path: str, depth: int, note: str = "") -> Shape:
        """Append the layers of `specs` to `seq`; returns the shape that comes out."""
        _check_list(specs, where)
        for i, spec in enumerate(specs):
            name, args = _parse(spec, f"{where}[{i}]")
            at = f"{where}[{i}] ({name}{note})"
            self.layers += 1
            if self.layers > MAX_LAYERS:
                raise UserError(f"{at}: the model expands to more than {MAX_LAYERS:,} layers; is a repeat's times "
                                "too large?")
            if name in _EXPANDS:
                inner_where, runs = _EXPANDS[name](args, shape, at, f"{where}[{i}]")
                for inner, inner_note in runs:
                    shape = self.add_all(seq, counters, inner, shape, inner_where, path, depth, inner_note or note)
                continue
            kind = None if name == "residual" else _lookup(name, at)
            prefix = kind.prefix if kind else "res"
            counters[prefix] += 1
            child = f"{prefix}{counters[prefix]}"
            if kind is None:
                module, shape = self._residual(args, shape, at, f"{where}[{i}].residual.layers", path + child, depth)
            else:
                module, shape = self._layer(kind, args, shape, at, path + child, depth)
            seq.add_module(child, module)
        return shape

    def _layer(self, kind: LayerKind, args: dict[str, Any], shape: Shape, at: str, path: str,
               depth: int) -> tuple[nn.Module, Shape]:
        kwargs = kind.arguments(args, shape, at)
        with torch.device("meta"):  # no memory yet: a layer of a trillion weights is refused, not allocated
            self.params += _params(_construct(kind, kwargs, at, shape))
        if self.params > MAX_PARAMS:
            raise UserError(f"{at}: the model reaches {self.params:,} parameters here, more than {MAX_PARAMS:,}; "
                            "check out_channels / out_features")
        bounds.check_memory(self.params * BYTES_PER_VALUE, f"{at}: the model's {self.params:,} float32 weights up to "
                            "here", "check out_channels / out_features")
        module = _construct(kind, kwargs, at, shape)
        window = kind.window(module, shape, None)
        self.warnings += check_window(window, shape, at) if window else []
        out = _propagate(module, shape, at)
        field_in, window = self.field.of(shape), window or kind.window(module, shape, out)  # an adaptive pool's
        self.field = field_in.through(window) if window else self.field
        self._note_composition(kind, (path, module, field_in), self.field.of(out))
        self.rows.append(Row(path, kind.label(module, shape), out, kind.weight(module), _params(module),
                             kind.macs(module, out), depth, _size(self.field.of(out)), memory_bytes(out)))
        return module, out

    def _note_composition(self, kind: LayerKind, here: tuple[str, nn.Module, Field | None],
                          field_out: Field | None) -> None:
        """The lecture's point: a linear layer after a linear layer is one linear layer, so
        the second adds parameters but no expressive power. Warn once per such pair."""
        if kind.role == TRANSPARENT:
            return
        if kind.role == SEPARATES:
            self.weighted = None  # a nonlinearity (or max-pooling, or a per-sample norm) between them
            return
        if self.weighted is not None and not _low_rank(self.weighted[1], here[1]):
            self.warnings.append(_composition_warning(self.weighted, here, field_out))
        self.weighted = here

    def _residual(self, args: dict[str, Any], shape: Shape, at: str, where: str, path: str,
                  depth: int) -> tuple[nn.Module, Shape]:
        if set(args) != {"layers"}:
            raise UserError(f"{at}: write residual as {{layers: [...]}}, got keys {sorted(args)}")
        header = Row(path, "Residual", shape, depth=depth)
        self.rows.append(header)
        body, before = nn.Sequential(), self.field.of(shape)
        self.weighted = None  # body(x) + x: a sum with the input is not a stack of the two layers
        out = self.add_all(body, Counter(), args["layers"], shape, where, path + ".body.", depth + 1)
        self.weighted = None
        header.shape, header.receptive_field = out, _size(self.field.of(out))  # the body's, the larger path
        if getattr(body[0], "inplace", False):
            raise UserError(f"{where}[0]: an in-place {type(body[0]).__name__.lower()} at the start of a residual "
                            "body would overwrite the input that the shortcut adds back; drop `inplace: true` there")
        shortcut = nn.Identity() if out == shape else _projection(shape, out, at, self.field.stride_since(before))
        self.rows.append(_shortcut_row(path + ".shortcut", shortcut, out, depth + 1, self.field.of(out)))
        return Residual(body, shortcut), out


def _shortcut_row(path: str, shortcut: nn.Module, out: Shape, depth: int, field: Field | None) -> Row:
    """The shortcut's line under a residual block; its memory is that of the sum body(x) + shortcut(x)."""
    parts = list(shortcut) if isinstance(shortcut, nn.Sequential) else [shortcut]
    label = "+ shortcut (1x1 projection + norm)" if len(parts) > 1 else "+ shortcut (identity)"
    return Row(path, label, out, " + ".join(filter(None, (kind_of(m).weight(m) for m in parts))), _params(shortcut),
               sum(kind_of(m).macs(m, out) for m in parts), depth, _size(field), memory_bytes(out))


def _size(field: Field | None) -> Shape | None:
    return field.size if field else None


def _low_rank(first: nn.Module, second: nn.Module) -> bool:
    """Two linear layers through a middle narrower than both ends are a low-rank factorisation,
    fewer weights than the one layer they compose into: on purpose (MobileNetV2's linear
    bottleneck), not a missing activation."""
    def width(layer: nn.Module, side: str) -> int:
        return getattr(layer, f"{side}_channels", None) or getattr(layer, f"{side}_features")
    middle = width(first, "out")
    return middle < width(first, "in") and middle < width(second, "out")


def _composition_warning(first: tuple[str, nn.Module, Field | None], second: tuple[str, nn.Module, Field | None],
                         field_out: Field | None) -> str:
    """'conv1 (5x5) and conv2 (5x5) compose into a single linear 9x9 convolution: ...'; the
    combined kernel is the receptive field the pair spans, in steps of the first one's input."""
    (name1, layer1, field_in), (name2, layer2, _) = first, second
    if not isinstance(layer2, nn.Linear) and field_in and field_out:
        combined = "x".join(str((b - a) // j + 1) for a, b, j in zip(field_in.size, field_out.size, field_in.jump))
        what = f"a single linear {combined} convolution"
    else:
        what = "a single linear layer"
    return (f"{name1} ({_kernel_text(layer1)}) and {name2} ({_kernel_text(layer2)}) compose into {what}: "
            "add an activation between them (e.g. relu)")


def _kernel_text(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"{layer.in_features} -> {layer.out_features}"
    return "x".join(map(str, layer.kernel_size))


def memory_bytes(shape: Shape) -> int:
    """One float32 map of this shape, in bytes."""
    return math.prod(shape) * BYTES_PER_VALUE


def _construct(kind: LayerKind, kwargs: dict[str, Any], at: str, shape: Shape) -> nn.Module:
    """The torch module; whatever its constructor rejects is the config's fault, said in one line.
    (Its warnings about degenerate sizes are left to the window check that follows.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return kind.cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, ZeroDivisionError, OverflowError, ...
        raise UserError(f"{at}: {first_line(err)} (incoming shape {fmt_shape(shape)}); see the "
                        f"torch.nn.{kind.cls.__name__} docs") from None


def _propagate(module: nn.Module, shape: Shape, at: str) -> Shape:
    """Run the layer on two zero samples, in eval mode so batchnorm statistics stay as built.
    (A meta tensor would cost no compute but pulls in sympy: seconds on every start.)"""
    try:
        with torch.inference_mode():
            out = module.eval()(torch.zeros((2, *shape)))
        module.train()
    except Exception as err:  # noqa: BLE001 - the layer's arguments do not fit this input
        raise UserError(f"{at}: cannot take input {fmt_shape(shape)}: {first_line(err)}") from None
    if not isinstance(out, torch.Tensor):
        raise UserError(f"{at}: returns a {type(out).__name__}, not one tensor the next layer can take "
                        "(return_indices?); leave that option out")
    out_shape = tuple(out.shape[1:])
    if not out_shape or min(out_shape) <= 0:
        raise UserError(f"{at}: output size reaches zero ({fmt_shape(shape)} -> {fmt_shape(out_shape)}); "
                        "use less downsampling or more padding")
    return out_shape


def _projection(shape: Shape, out: Shape, at: str, stride: tuple[int, ...] | None) -> nn.Sequential:
    """1x1 conv with the body's stride + batchnorm, so the shortcut has the body's shape and
    samples the positions the body's windows start at."""
    n = len(shape) - 1
    if len(out) != len(shape) or n not in (1, 2, 3):
        raise UserError(f"{at}: the residual body turns {fmt_shape(shape)} into {fmt_shape(out)}; "
                        "a shortcut needs a map of the same rank: keep flatten outside residual blocks")
    if stride is None:  # e.g. an adaptive pool in the body: the stride that fits
        stride = tuple(math.ceil(w / o) for w, o in zip(shape[1:], out[1:]))
    projected = tuple((w - 1) // s + 1 for w, s in zip(shape[1:], stride))
    if projected != out[1:]:
        raise UserError(f"{at}: no 1x1 strided projection turns {fmt_shape(shape)} into {fmt_shape(out)}; "
                        "make the body downsample by a whole stride (e.g. conv stride 2 with padding 1)")
    conv = getattr(nn, f"Conv{n}d")(shape[0], out[0], kernel_size=1, stride=stride, bias=False)
    return nn.Sequential(conv, getattr(nn, f"BatchNorm{n}d")(out[0]))


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
