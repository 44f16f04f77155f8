"""Model config -> nn.Sequential, with every shape checked and explained.

The builder walks the layer list with one sample's shape, infers each layer's input size,
checks conv and pool windows against the output-size formula, runs each layer on a tiny
zero batch to learn its output shape, and records a table row: output size, receptive field,
activation memory, weight size, parameters, multiply-accumulates. Two linear layers with
nothing nonlinear between them are a warning: together they are one linear layer.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.pooling import _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, _AvgPoolNd, _MaxPoolNd

from cnn_cli.errors import UserError
from cnn_cli.layers import CATALOGUE, COMPOSITES, LayerKind, Residual, Shape

_WINDOWED = (_ConvNd, _MaxPoolNd, _AvgPoolNd)
_ADAPTIVE = (_AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd)
_LINEAR = (_ConvNd, nn.Linear)  # the layers whose weights a stack of them would multiply together
# linear maps too (batchnorm is one at test time), so they do not separate two linear layers
_TRANSPARENT = (_BatchNorm, _AvgPoolNd, _AdaptiveAvgPoolNd, nn.Flatten, _DropoutNd, nn.Identity)
BYTES_PER_VALUE = 4  # float32 activations
_AXES = {1: ("positions",), 2: ("rows", "columns"), 3: ("slices", "rows", "columns")}
_RANKS = {1: "a flat vector", 2: "a C x L map", 3: "a C x H x W map", 4: "a C x D x H x W map"}
# far beyond any real network, so that a config (or a shared checkpoint's) cannot make the
# builder loop, recurse or allocate without end
MAX_LAYERS = 10_000  # after repeats are expanded
MAX_NESTING = 20  # repeat and residual blocks inside each other
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


def fmt_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape)


def build_model(layers: Any, input_shape: Sequence[int], where: str = "model.layers") -> BuiltModel:
    """Build `layers` (a list of layer specs) for samples of `input_shape` (C, H, W)."""
    if isinstance(layers, (DictConfig, ListConfig)):
        layers = OmegaConf.to_container(layers, resolve=True)
    walk = _Walk()
    model = nn.Sequential()
    walk.add_all(model, Counter(), layers, tuple(input_shape), where, path="", depth=0)
    return BuiltModel(model, tuple(input_shape), walk.rows, walk.warnings, walk.receptive_field)


def check_norm(model: DictConfig) -> None:
    """A model config with `norms` (lenet5_bn) lets model.norm choose one; any other choice
    would surface as an interpolation error deep in its layers."""
    norms = model.get("norms")
    if isinstance(norms, DictConfig) and model.get("norm") not in norms:
        raise UserError(f"model.norm={model.get('norm')}: the model '{model.get('name')}' offers "
                        f"{' | '.join(map(str, norms))}")


def build_from_config(cfg: DictConfig) -> BuiltModel:
    """Build cfg.model for cfg.dataset's input shape, checking it ends in one score per class."""
    check_norm(cfg.model)
    built = build_model(cfg.model.layers, cfg.dataset.input_shape)
    classes = cfg.dataset.num_classes
    if built.output_shape != (classes,):
        raise UserError(
            f"model.layers: the model '{cfg.model.name}' ends with output {fmt_shape(built.output_shape)} but "
            f"dataset '{cfg.dataset.name}' has {classes} classes; end with "
            "`- linear: {out_features: ${dataset.num_classes}}`"
        )
    return built


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


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _compact(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


# a conv or linear layer: its name, the module, the receptive field and jump at its input
_Linear = tuple[str, nn.Module, "Shape | None", Shape]


class _Walk:
    """State of one walk through a model config: the table so far and the receptive field."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.warnings: list[str] = []
        self.receptive_field: Shape | None = None
        self.jump: Shape | None = None
        # the last conv or linear layer with only linear layers after it so far: (name, module,
        # receptive field and jump at its input), to warn when the next one composes with it
        self.linear: _Linear | None = None
        self.layers = 0  # built so far, against MAX_LAYERS
        self.params = 0  # against MAX_PARAMS

    def add_all(self, seq: nn.Sequential, counters: Counter, specs: Any, shape: Shape, where: str,
                path: str, depth: int, note: str = "") -> Shape:
        """Append the layers of `specs` to `seq`; returns the shape that comes out."""
        if not isinstance(specs, list) or not specs:
            raise UserError(
                f"{where} must be a non-empty list of layers, e.g. [{{conv2d: {{out_channels: 16, "
                f"kernel_size: 3}}}}, relu]; got {specs!r}"
            )
        if where.count(".repeat.layers") + where.count(".residual.layers") > MAX_NESTING:
            raise UserError(f"{where}: blocks nested more than {MAX_NESTING} deep; no network needs that many, "
                            "write the repeated part once with repeat: {times: N, layers: [...]}")
        for i, spec in enumerate(specs):
            name, args = _parse(spec, f"{where}[{i}]")
            at = f"{where}[{i}] ({name}{note})"
            self.layers += 1
            if self.layers > MAX_LAYERS:
                raise UserError(f"{at}: the model expands to more than {MAX_LAYERS:,} layers; is a repeat's times "
                                "too large?")
            if name == "repeat":
                times, inner = self._repeat_args(args, at)
                for r in range(times):
                    rep_note = f", repeat {r + 1} of {times}" if times > 1 else note
                    shape = self.add_all(seq, counters, inner, shape, f"{where}[{i}].repeat.layers", path, depth,
                                         rep_note)
                continue
            if name == "residual":
                prefix = "res"
            else:
                kind = _lookup(name, at)
                prefix = kind.prefix
            counters[prefix] += 1
            child = f"{prefix}{counters[prefix]}"
            if name == "residual":
                module, shape = self._residual(args, shape, at, f"{where}[{i}].residual.layers", path + child, depth)
            else:
                module, shape = self._layer(kind, args, shape, at, path + child, depth)
            seq.add_module(child, module)
        return shape

    @staticmethod
    def _repeat_args(args: dict[str, Any], at: str) -> tuple[int, list]:
        if set(args) != {"times", "layers"}:
            raise UserError(f"{at}: write repeat as {{times: N, layers: [...]}}, got keys {sorted(args)}")
        times = args["times"]
        if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_LAYERS:
            raise UserError(f"{at}: times must be a whole number from 1 to {MAX_LAYERS:,}, got {times!r}")
        return times, args["layers"]

    def _layer(self, kind: LayerKind, args: dict[str, Any], shape: Shape, at: str, path: str,
               depth: int) -> tuple[nn.Module, Shape]:
        if kind.input_ndims and len(shape) not in kind.input_ndims:
            raise UserError(_rank_message(kind, shape, at))
        kwargs = self._kwargs(kind, args, shape, at)
        with torch.device("meta"):  # no memory yet: a layer of a trillion weights is refused, not allocated
            self.params += _params(_construct(kind, kwargs, at, shape))
        if self.params > MAX_PARAMS:
            raise UserError(f"{at}: the model reaches {self.params:,} parameters here, more than {MAX_PARAMS:,}; "
                            "check out_channels / out_features")
        module = _construct(kind, kwargs, at, shape)
        self._check_window(module, shape, at)
        out = _propagate(module, shape, at)
        field_in, jump_in = self._field_of(shape), self._jump_of(len(shape) - 1)
        self._update_receptive_field(module, shape, out)
        self._check_composition(module, (path, module, field_in, jump_in), self._field_of(out))
        self.rows.append(Row(path, _label(module, shape), out, _weight(module), _params(module),
                             _macs(module, out), depth, self._field_of(out), memory_bytes(out)))
        return module, out

    @staticmethod
    def _kwargs(kind: LayerKind, args: dict[str, Any], shape: Shape, at: str) -> dict[str, Any]:
        accepted = kind.accepted_kwargs()
        for key in args:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise UserError(f"{at}: unknown argument '{key}'; {hint}{kind.name} accepts: {', '.join(accepted)}")
        _check_types(kind, args, at)
        kwargs = dict(args)
        for key, value in kind.infer(shape).items():
            if kind.must_agree and key in kwargs and kwargs[key] != value:
                raise UserError(
                    f"{at}: {key}={kwargs[key]} but the incoming shape {fmt_shape(shape)} gives {value}; "
                    f"leave {key} out, it is inferred"
                )
            kwargs.setdefault(key, value)
        params = inspect.signature(kind.cls.__init__).parameters
        missing = [k for k in accepted if params[k].default is inspect.Parameter.empty and k not in kwargs]
        if missing:
            raise UserError(f"{at}: missing {', '.join(missing)}; e.g. {{{kind.name}: {{{missing[0]}: ...}}}}")
        if issubclass(kind.cls, nn.modules.instancenorm._InstanceNorm) and math.prod(shape[1:]) == 1:
            raise UserError(f"{at}: {kind.name} normalises each channel over its positions, but the incoming "
                            f"{fmt_shape(shape)} has one per channel (training would fail); use batchnorm or "
                            "downsample less")
        groups = kwargs.get("num_groups")
        if kind.cls is nn.GroupNorm and isinstance(groups, int) and groups < 1:
            raise UserError(f"{at}: num_groups={groups} must be >= 1 and divide the {shape[0]} incoming channels")
        if kind.cls is nn.GroupNorm and isinstance(groups, int) and shape[0] % groups:
            raise UserError(f"{at}: num_groups={kwargs['num_groups']} does not divide the {shape[0]} "
                            "incoming channels; pick a divisor of the channel count")
        if issubclass(kind.cls, _ConvNd):
            groups, out_channels = kwargs.get("groups", 1), kwargs.get("out_channels")
            if isinstance(groups, int) and isinstance(out_channels, int) and groups > 0 and (
                    shape[0] % groups or out_channels % groups):
                raise UserError(f"{at}: groups={groups} must divide both in_channels={shape[0]} and "
                                f"out_channels={out_channels}; pick a groups value that divides both")
        return kwargs

    def _check_window(self, module: nn.Module, shape: Shape, at: str) -> None:
        """Apply output = (W - K + 2P) / S + 1 per spatial axis, before PyTorch does."""
        if not isinstance(module, _WINDOWED) or module.padding == "same":
            return
        n = len(shape) - 1
        kernel, stride = _tuple(module.kernel_size, n), _tuple(module.stride, n)
        padding = (0,) * n if module.padding == "valid" else _tuple(module.padding, n)
        dilation = _tuple(getattr(module, "dilation", 1), n)
        for axis, (w, k, s, p, d) in enumerate(zip(shape[1:], kernel, stride, padding, dilation)):
            if min(k, s, d) < 1 or p < 0:
                raise UserError(f"{at}: kernel_size, stride and dilation must be >= 1 and padding >= 0; "
                                f"got kernel {k}, stride {s}, dilation {d}, padding {p}")
            span = d * (k - 1) + 1
            k_text = f"kernel {k}" + (f" with dilation {d} (spans {span})" if d > 1 else "")
            if span > w + 2 * p:
                raise UserError(
                    f"{at}: {k_text} is larger than its padded input: {_AXES[n][axis]} {w} + 2 x padding {p} "
                    f"= {w + 2 * p} (input {fmt_shape(shape)}); use a smaller kernel_size or more padding, "
                    "or downsample less before it"
                )
            if span < s:
                self.warnings.append(f"{at}: kernel {span} is smaller than stride {s}: {s - span} of every {s} "
                                     f"input {_AXES[n][axis]} fall between windows and are never read")
            # the windows stop short of the last positions; only those past the padding are lost
            ignored = (w + 2 * p - span) % s - p
            if ignored > 0 and not getattr(module, "ceil_mode", False):
                self.warnings.append(
                    f"{at}: (W - K + 2P) / S + 1 = ({w} - {span} + {2 * p}) / {s} + 1 is not a whole number; "
                    f"the last {ignored} input {_AXES[n][axis]} are ignored (input {fmt_shape(shape)})"
                )

    def _update_receptive_field(self, module: nn.Module, shape: Shape, out: Shape) -> None:
        """r_out = r_in + (K - 1) x jump_in for each conv or pool (K spanning its dilation);
        each stride multiplies the jump. An adaptive pool counts as the window it averages."""
        n = len(shape) - 1
        if isinstance(module, _ADAPTIVE) and len(out) == len(shape):
            spans = [math.ceil(w / o) for w, o in zip(shape[1:], out[1:])]
            stride = [max(1, w // o) for w, o in zip(shape[1:], out[1:])]  # an output larger than its input: 1
        elif isinstance(module, _WINDOWED):
            kernel, stride = _tuple(module.kernel_size, n), _tuple(module.stride, n)
            spans = [d * (k - 1) + 1 for k, d in zip(kernel, _tuple(getattr(module, "dilation", 1), n))]
        else:
            return
        self.receptive_field, self.jump = self._field_of(shape), self._jump_of(n)
        self.receptive_field = tuple(r + (k - 1) * j for r, k, j in zip(self.receptive_field, spans, self.jump))
        self.jump = tuple(j * s for j, s in zip(self.jump, stride))

    def _field_of(self, shape: Shape) -> Shape | None:
        """The receptive field of a map of `shape` so far: 1 before any window; none for a flat vector."""
        n = len(shape) - 1
        if n < 1:
            return None
        return self.receptive_field if self.receptive_field is not None and len(self.receptive_field) == n else (1,) * n

    def _jump_of(self, n: int) -> Shape:
        return self.jump if self.jump is not None and len(self.jump) == n else (1,) * n

    def _check_composition(self, module: nn.Module, here: _Linear, field_out: Shape | None) -> None:
        """The lecture's point: a linear layer after a linear layer is one linear layer, so
        the second adds parameters but no expressive power. Warn once per such pair."""
        if isinstance(module, _TRANSPARENT):
            return
        if not isinstance(module, _LINEAR):
            self.linear = None  # a nonlinearity (or max-pooling, or a per-sample norm) between them
            return
        if self.linear is not None:
            self.warnings.append(_composition_warning(self.linear, here, field_out))
        self.linear = here

    def _residual(self, args: dict[str, Any], shape: Shape, at: str, where: str, path: str,
                  depth: int) -> tuple[nn.Module, Shape]:
        if set(args) != {"layers"}:
            raise UserError(f"{at}: write residual as {{layers: [...]}}, got keys {sorted(args)}")
        header = Row(path, "Residual", shape, depth=depth)
        self.rows.append(header)
        body = nn.Sequential()
        n = len(shape) - 1
        jump_before = self._jump_of(n)
        self.linear = None  # body(x) + x: a sum with the input is not a stack of the two layers
        out = self.add_all(body, Counter(), args["layers"], shape, where, path + ".body.", depth + 1)
        self.linear = None
        header.shape, header.receptive_field = out, self._field_of(out)  # the body's, the larger path
        first = next(iter(body.children()))
        if getattr(first, "inplace", False):
            raise UserError(f"{where}[0]: an in-place {type(first).__name__.lower()} at the start of a residual body "
                            "would overwrite the input that the shortcut adds back; drop `inplace: true` there")
        stride = None  # the body's own stride, when its convs and pools say it
        if self.jump is not None and len(self.jump) == n:
            stride = tuple(a // b for a, b in zip(self.jump, jump_before))
        shortcut = nn.Identity() if out == shape else _projection(shape, out, at, stride)
        label = "+ shortcut (identity)" if out == shape else "+ shortcut (1x1 projection + norm)"
        # the memory of the sum body(x) + shortcut(x), the block's output
        self.rows.append(Row(path + ".shortcut", label, out, _weight(shortcut), _params(shortcut),
                             _macs(shortcut, out), depth + 1, self._field_of(out), memory_bytes(out)))
        return Residual(body, shortcut), out


def _composition_warning(first: _Linear, second: _Linear, field_out: Shape | None) -> str:
    """'conv1 (5x5) and conv2 (5x5) compose into a single linear 9x9 convolution: ...'; the
    combined kernel is the receptive field the pair spans, in steps of the first one's input."""
    (name1, layer1, field_in, jump_in), (name2, layer2, _, _) = first, second
    if isinstance(layer2, _ConvNd) and field_in and field_out:
        combined = "x".join(str((b - a) // j + 1) for a, b, j in zip(field_in, field_out, jump_in))
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


def _check_types(kind: LayerKind, args: dict[str, Any], at: str) -> None:
    """Catch a value of the wrong type by the kind of PyTorch's default, before PyTorch
    fails somewhere deep with a message about tensors."""
    params = inspect.signature(kind.cls.__init__).parameters
    for key, value in args.items():
        default = params[key].default
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(default, float):  # eps, momentum (None: a cumulative average), p, ...
            ok, wanted = value is None or isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, int) or default is inspect.Parameter.empty or key in ("stride", "padding"):
            ints = value if isinstance(value, list) else [value]
            ok = all(isinstance(v, int) and not isinstance(v, bool) or v is None and key == "output_size"
                     for v in ints) or (value is None and key == "stride") or (
                key == "padding" and value in ("same", "valid"))
            wanted = "a whole number or a list of them" + (", or 'same' / 'valid'" * (key == "padding"))
        else:
            continue
        if not ok:
            raise UserError(f"{at}: {key} must be {wanted}, got {value!r}")


def _rank_message(kind: LayerKind, shape: Shape, at: str) -> str:
    if kind.cls is nn.Linear:
        return f"{at}: linear needs a flat input but gets the map {fmt_shape(shape)}; add `- flatten` before it"
    wanted = " or ".join(_RANKS[n] for n in kind.input_ndims)
    return f"{at}: {kind.name} needs {wanted} but gets {fmt_shape(shape)}; use a layer of the matching dimension"


def _construct(kind: LayerKind, kwargs: dict[str, Any], at: str, shape: Shape) -> nn.Module:
    """The torch module; whatever its constructor rejects is the config's fault, said in one line.
    (Its warnings about degenerate sizes are left to the window check that follows.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return kind.cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, ZeroDivisionError, OverflowError, ...
        raise UserError(f"{at}: {_first_line(err)} (incoming shape {fmt_shape(shape)}); see the "
                        f"torch.nn.{kind.cls.__name__} docs") from None


def _first_line(err: Exception) -> str:
    """PyTorch's message without the C++ frames some of them carry."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _propagate(module: nn.Module, shape: Shape, at: str) -> Shape:
    """Run the layer on two zero samples, in eval mode so batchnorm statistics stay as built.
    (A meta tensor would cost no compute but pulls in sympy: seconds on every start.)"""
    try:
        with torch.inference_mode():
            out = module.eval()(torch.zeros((2, *shape)))
        module.train()
    except Exception as err:  # noqa: BLE001 - the layer's arguments do not fit this input
        raise UserError(f"{at}: cannot take input {fmt_shape(shape)}: {_first_line(err)}") from None
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


def _label(module: nn.Module, shape: Shape) -> str:
    name = type(module).__name__
    if isinstance(module, _ConvNd):
        n = len(shape) - 1
        padding = module.padding if isinstance(module.padding, str) else _compact(_tuple(module.padding, n))
        parts = [f"C_out={module.out_channels}", f"K={_compact(module.kernel_size)}", f"P={padding}",
                 f"S={_compact(module.stride)}"]
        parts += [f"D={_compact(module.dilation)}"] * (max(module.dilation) > 1)
        parts += [f"G={module.groups}"] * (module.groups > 1)
        return f"{name} ({', '.join(parts)})"
    if isinstance(module, (_MaxPoolNd, _AvgPoolNd)):
        n = len(shape) - 1
        parts = [f"K={_compact(_tuple(module.kernel_size, n))}", f"S={_compact(_tuple(module.stride, n))}"]
        parts += [f"P={_compact(_tuple(module.padding, n))}"] * (max(_tuple(module.padding, n)) > 0)
        return f"{name} ({', '.join(parts)})"
    if isinstance(module, nn.Linear):
        return f"{name} ({module.in_features} -> {module.out_features})"
    if hasattr(module, "output_size"):
        return f"{name} (out={_compact(_tuple(module.output_size, len(shape) - 1))})"
    if isinstance(module, nn.GroupNorm):
        return f"{name} ({module.num_groups} groups)"
    if hasattr(module, "num_features"):
        return f"{name} ({module.num_features})"
    if hasattr(module, "p"):
        return f"{name} (p={module.p})"
    return name


def _weight(module: nn.Module) -> str:
    """Weight size as the lecture writes it: C_out x C_in x K x K, and in x out for linear."""
    if isinstance(module, nn.Sequential):
        return " + ".join(filter(None, (_weight(child) for child in module)))
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return ""
    if isinstance(module, nn.Linear):
        return f"{module.in_features} x {module.out_features}"
    return fmt_shape(weight.shape)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(module: nn.Module, out: Shape) -> int:
    """Multiply-accumulates per sample of the conv and linear layers (the bulk of the work)."""
    if isinstance(module, nn.Sequential):
        return sum(_macs(child, out) for child in module)
    if isinstance(module, _ConvNd):
        return math.prod(out) * module.weight[0].numel()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0
