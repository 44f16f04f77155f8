"""The layer catalogue: which torch.nn classes a model config may name and what the builder
knows of each: how its input size is inferred from the incoming shape, which arguments it
checks, how the shape table labels it, its weight size and multiply-accumulates, its window.
Adding a layer type is one entry here.

Model configs travel inside shared checkpoints, so a config can only name a layer from
this catalogue, never an import path.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from torch import nn

from cnn_cli.errors import UserError
from cnn_cli.geometry import Shape, Window, adaptive_window, fmt_shape

# How a layer combines with its neighbours, for the warning that two linear layers in a row
# are one linear layer: a layer with weights to multiply, a linear map with none (batchnorm is
# one at test time) that leaves such a pair a pair, or anything that separates them.
WEIGHTED, TRANSPARENT, SEPARATES = "weighted", "transparent", "separates"
_RANKS = {1: "a flat vector", 2: "a C x L map", 3: "a C x H x W map", 4: "a C x D x H x W map"}


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _compact(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _name(module: nn.Module, shape: Shape) -> str:
    return type(module).__name__


def _weight(module: nn.Module) -> str:
    """Weight size as the lecture writes it: C_out x C_in x K x K."""
    weight = getattr(module, "weight", None)
    return fmt_shape(weight.shape) if weight is not None else ""


def _no_macs(module: nn.Module, out: Shape) -> int:
    return 0


def _no_check(kwargs: dict[str, Any], shape: Shape) -> str | None:
    return None


def _no_window(module: nn.Module, shape: Shape, out: Shape | None) -> Window | None:
    return None


@dataclass(frozen=True)
class LayerKind:
    """One catalogue layer: the torch class and the builder's hooks for it."""

    cls: type[nn.Module]
    prefix: str  # child-name prefix: conv -> conv1, conv2, ...
    input_ndims: tuple[int, ...] | None = None  # accepted ranks of the incoming shape
    infer: Callable[[Shape], dict[str, Any]] = lambda shape: {}  # sizes taken from the shape
    must_agree: bool = True  # an inferred size written in the config must equal the inferred one
    check: Callable[[dict[str, Any], Shape], str | None] = _no_check  # what PyTorch would fail on later
    label: Callable[[nn.Module, Shape], str] = _name  # the table's Layer column
    weight: Callable[[nn.Module], str] = _weight
    macs: Callable[[nn.Module, Shape], int] = _no_macs  # per sample, given the output shape
    window: Callable[[nn.Module, Shape, Shape | None], Window | None] = _no_window  # given in, out shapes
    role: str = SEPARATES
    rank_hint: str = "use a layer of the matching dimension"

    @property
    def name(self) -> str:
        return self.cls.__name__.lower()

    def accepted_kwargs(self) -> list[str]:
        """PyTorch's own keyword names for this layer (the PyTorch docs apply)."""
        params = inspect.signature(self.cls.__init__).parameters.values()
        return [p.name for p in params if p.name not in ("self", "device", "dtype")
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def arguments(self, args: dict[str, Any], shape: Shape, at: str) -> dict[str, Any]:
        """The config's arguments plus the inferred sizes, each checked before PyTorch sees it."""
        if self.input_ndims and len(shape) not in self.input_ndims:
            wanted = " or ".join(_RANKS[n] for n in self.input_ndims)
            raise UserError(f"{at}: {self.name} needs {wanted} but gets {fmt_shape(shape)}; {self.rank_hint}")
        accepted = self.accepted_kwargs()
        for key in args:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise UserError(f"{at}: unknown argument '{key}'; {hint}{self.name} accepts: {', '.join(accepted)}")
        params = inspect.signature(self.cls.__init__).parameters
        for key, value in args.items():
            wanted = _wrong_type(key, value, params[key].default)
            if wanted:
                raise UserError(f"{at}: {key} must be {wanted}, got {value!r}")
        kwargs = dict(args)
        for key, value in self.infer(shape).items():
            if self.must_agree and key in kwargs and kwargs[key] != value:
                raise UserError(f"{at}: {key}={kwargs[key]} but the incoming shape {fmt_shape(shape)} gives {value}; "
                                f"leave {key} out, it is inferred")
            kwargs.setdefault(key, value)
        missing = [k for k in accepted if params[k].default is inspect.Parameter.empty and k not in kwargs]
        if missing:
            raise UserError(f"{at}: missing {', '.join(missing)}; e.g. {{{self.name}: {{{missing[0]}: ...}}}}")
        problem = self.check(kwargs, shape)
        if problem:
            raise UserError(f"{at}: {problem}")
        return kwargs


def _wrong_type(key: str, value: Any, default: Any) -> str | None:
    """What `value` should be, judged by the kind of PyTorch's default, when it is not: a
    wrong type caught here, not somewhere deep in PyTorch with a message about tensors."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, float):  # eps, momentum (None: a cumulative average), p, ...
        number = value is None or isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number else "a number"
    if not (isinstance(default, int) or default is inspect.Parameter.empty or key in ("stride", "padding")):
        return None
    whole = all(isinstance(v, int) and not isinstance(v, bool) or v is None and key == "output_size"
                for v in (value if isinstance(value, list) else [value]))
    if whole or value is None and key == "stride" or key == "padding" and value in ("same", "valid"):
        return None
    return "a whole number or a list of them" + (", or 'same' / 'valid'" * (key == "padding"))


def _channels(key: str) -> Callable[[Shape], dict[str, Any]]:
    return lambda shape: {key: shape[0]}


# conv1d/2d/3d


def _conv_groups(kwargs: dict[str, Any], shape: Shape) -> str | None:
    groups, out_channels = kwargs.get("groups", 1), kwargs.get("out_channels")
    if isinstance(groups, int) and isinstance(out_channels, int) and groups > 0 and (
            shape[0] % groups or out_channels % groups):
        return (f"groups={groups} must divide both in_channels={shape[0]} and out_channels={out_channels}; "
                "pick a groups value that divides both")
    return None


def _conv_label(module: nn.Module, shape: Shape) -> str:
    n = len(shape) - 1
    padding = module.padding if isinstance(module.padding, str) else _compact(_tuple(module.padding, n))
    parts = [f"C_out={module.out_channels}", f"K={_compact(module.kernel_size)}", f"P={padding}",
             f"S={_compact(module.stride)}"]
    parts += [f"D={_compact(module.dilation)}"] * (max(module.dilation) > 1)
    parts += [f"G={module.groups}"] * (module.groups > 1)
    return f"{type(module).__name__} ({', '.join(parts)})"


def _conv_macs(module: nn.Module, out: Shape) -> int:
    return math.prod(out) * module.weight[0].numel()


def _sliding(module: nn.Module, shape: Shape, out: Shape | None) -> Window:
    n = len(shape) - 1
    padding = None if module.padding == "same" else (0,) * n if module.padding == "valid" else _tuple(module.padding, n)
    return Window(_tuple(module.kernel_size, n), _tuple(module.stride, n), padding,
                  _tuple(getattr(module, "dilation", 1), n), getattr(module, "ceil_mode", False))


# max/avg pooling, adaptive pooling


def _pool_label(module: nn.Module, shape: Shape) -> str:
    n = len(shape) - 1
    parts = [f"K={_compact(_tuple(module.kernel_size, n))}", f"S={_compact(_tuple(module.stride, n))}"]
    parts += [f"P={_compact(_tuple(module.padding, n))}"] * (max(_tuple(module.padding, n)) > 0)
    return f"{type(module).__name__} ({', '.join(parts)})"


def _adaptive_label(module: nn.Module, shape: Shape) -> str:
    return f"{type(module).__name__} (out={_compact(_tuple(module.output_size, len(shape) - 1))})"


def _adaptive(module: nn.Module, shape: Shape, out: Shape | None) -> Window | None:
    """Known once the output is: an adaptive pool counts as the window it averages over."""
    return adaptive_window(shape, out) if out is not None and len(out) == len(shape) else None


# linear, norms, dropout


def _linear_label(module: nn.Module, shape: Shape) -> str:
    return f"Linear ({module.in_features} -> {module.out_features})"


def _linear_weight(module: nn.Module) -> str:
    """in x out, as the lecture writes a fully-connected layer."""
    return f"{module.in_features} x {module.out_features}"


def _linear_macs(module: nn.Module, out: Shape) -> int:
    return module.in_features * module.out_features


def _features_label(module: nn.Module, shape: Shape) -> str:
    return f"{type(module).__name__} ({module.num_features})"


def _groupnorm_check(kwargs: dict[str, Any], shape: Shape) -> str | None:
    groups = kwargs.get("num_groups")
    if isinstance(groups, int) and groups < 1:
        return f"num_groups={groups} must be >= 1 and divide the {shape[0]} incoming channels"
    if isinstance(groups, int) and shape[0] % groups:
        return f"num_groups={groups} does not divide the {shape[0]} incoming channels; pick a divisor of {shape[0]}"
    return None


def _instancenorm_check(kwargs: dict[str, Any], shape: Shape) -> str | None:
    if math.prod(shape[1:]) == 1:
        return (f"instancenorm{len(shape) - 1}d normalises each channel over its positions, but the incoming "
                f"{fmt_shape(shape)} has one per channel (training would fail); use batchnorm or downsample less")
    return None


def _catalogue() -> dict[str, LayerKind]:
    norm = partial(LayerKind, prefix="bn", infer=_channels("num_features"), label=_features_label, role=TRANSPARENT)
    dropout = partial(LayerKind, prefix="drop", label=lambda m, s: f"{type(m).__name__} (p={m.p})", role=TRANSPARENT)
    kinds: list[LayerKind] = [
        LayerKind(nn.Linear, "fc", (1,), lambda s: {"in_features": s[-1]}, label=_linear_label,
                  weight=_linear_weight, macs=_linear_macs, role=WEIGHTED, rank_hint="add `- flatten` before it"),
        LayerKind(nn.Flatten, "flatten", role=TRANSPARENT),
        dropout(nn.Dropout),
        dropout(nn.Dropout2d, input_ndims=(3,)),
        LayerKind(nn.LayerNorm, "ln", None, lambda s: {"normalized_shape": list(s)}, must_agree=False),
        LayerKind(nn.GroupNorm, "gn", None, _channels("num_channels"), check=_groupnorm_check,
                  label=lambda m, s: f"GroupNorm ({m.num_groups} groups)"),
        norm(nn.BatchNorm1d, input_ndims=(1, 2)),
    ]
    for n in (1, 2, 3):
        spatial = (n + 1,)
        pool = partial(LayerKind, prefix="pool", input_ndims=spatial, label=_pool_label, window=_sliding)
        adaptive = partial(LayerKind, prefix="pool", input_ndims=spatial, label=_adaptive_label, window=_adaptive)
        kinds += [
            LayerKind(getattr(nn, f"Conv{n}d"), "conv", spatial, _channels("in_channels"), check=_conv_groups,
                      label=_conv_label, macs=_conv_macs, window=_sliding, role=WEIGHTED),
            pool(getattr(nn, f"MaxPool{n}d")),
            pool(getattr(nn, f"AvgPool{n}d"), role=TRANSPARENT),
            LayerKind(getattr(nn, f"InstanceNorm{n}d"), "inorm", spatial, _channels("num_features"),
                      check=_instancenorm_check, label=_features_label),
            *[norm(getattr(nn, f"BatchNorm{n}d"), input_ndims=spatial)] * (n > 1),
            adaptive(getattr(nn, f"AdaptiveAvgPool{n}d"), role=TRANSPARENT),
            adaptive(getattr(nn, f"AdaptiveMaxPool{n}d")),
        ]
    for act in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus):
        kinds.append(LayerKind(act, act.__name__.lower()))
    kinds.append(LayerKind(nn.Identity, "identity", role=TRANSPARENT))
    return {kind.name: kind for kind in kinds}


CATALOGUE: dict[str, LayerKind] = _catalogue()


# The blocks a stage repeats, as layer specs for n spatial axes: a stage of ResNet-20 or
# VGG-11 is then one line of config, and the built model is the one the specs spell out.


def _conv_bn_relu(n: int, channels: int, stride: int, kernel_size: int = 3, groups: int = 1,
                  act: str = "relu") -> list:
    """VGG's unit (with batchnorm): a 3x3 convolution, bias-free before its norm."""
    conv = {"out_channels": channels, "kernel_size": kernel_size, "stride": stride, "padding": kernel_size // 2,
            "bias": False, **({"groups": groups} if groups > 1 else {})}
    return [{f"conv{n}d": conv}, f"batchnorm{n}d", act]


def _vgg(n: int, in_channels: int, channels: int, stride: int) -> list:
    return _conv_bn_relu(n, channels, stride)


def _basic(n: int, in_channels: int, channels: int, stride: int) -> list:
    """ResNet's basic block (He et al. 2016): two 3x3 convs with batchnorm, the shortcut added
    before the last relu."""
    body = _conv_bn_relu(n, channels, stride) + _conv_bn_relu(n, channels, 1)[:2]
    return [{"residual": {"layers": body}}, "relu"]


def _bottleneck(n: int, in_channels: int, channels: int, stride: int) -> list:
    """ResNet-50's block: 1x1 down to a quarter of the channels, 3x3 with the stride (as
    torchvision places it), 1x1 back up, the shortcut added before the last relu."""
    width = max(1, channels // 4)
    body = (_conv_bn_relu(n, width, 1, kernel_size=1) + _conv_bn_relu(n, width, stride)
            + _conv_bn_relu(n, channels, 1, kernel_size=1)[:2])
    return [{"residual": {"layers": body}}, "relu"]


def _inverted(n: int, in_channels: int, channels: int, stride: int, expand: int = 6) -> list:
    """MobileNetV2's inverted residual (Sandler et al. 2018), as torchvision builds it: a 1x1
    expansion to `expand` times the input channels (none when expand is 1), a 3x3 depthwise
    conv with the stride, relu6 after both, then a linear 1x1 projection (no activation).
    The input is added back only where the shape stays (stride 1, same channels)."""
    hidden = in_channels * expand
    body = (_conv_bn_relu(n, hidden, 1, kernel_size=1, act="relu6") * (expand != 1)
            + _conv_bn_relu(n, hidden, stride, groups=hidden, act="relu6")
            + _conv_bn_relu(n, channels, 1, kernel_size=1)[:2])
    return [{"residual": {"layers": body}}] if stride == 1 and in_channels == channels else body


# each block from (spatial axes, incoming channels, out_channels, stride[, expand])
BLOCKS: dict[str, Callable[..., list]] = {
    "conv_bn_relu": _vgg, "basic": _basic, "bottleneck": _bottleneck, "inverted": _inverted}
EXPANDING = ("inverted",)  # the blocks a stage's `expand` applies to
COMPOSITES = ("repeat", "residual", "stage")


def kind_of(module: nn.Module) -> LayerKind:
    """The catalogue entry a built module came from."""
    return CATALOGUE[type(module).__name__.lower()]


class Residual(nn.Module):
    """y = body(x) + shortcut(x): the shortcut is nn.Identity, or a projection when the
    body changes the shape (He et al. 2016, option B)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)
