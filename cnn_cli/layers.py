"""The layer catalogue: which torch.nn classes a model config may name, and how each
one's input size is inferred from the incoming shape.

Model configs travel inside shared checkpoints, so a config can only name a layer from
this catalogue, never an import path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

Shape = tuple[int, ...]  # one sample's shape, without the batch dimension


@dataclass(frozen=True)
class LayerKind:
    """How to build one catalogue layer from the shape that flows into it."""

    cls: type[nn.Module]
    prefix: str  # child-name prefix: conv -> conv1, conv2, ...
    input_ndims: tuple[int, ...] | None = None  # accepted ranks of the incoming shape
    infer: Callable[[Shape], dict[str, Any]] = lambda shape: {}  # sizes taken from the shape
    must_agree: bool = True  # an inferred size written in the config must equal the inferred one

    @property
    def name(self) -> str:
        return self.cls.__name__.lower()

    def accepted_kwargs(self) -> list[str]:
        """PyTorch's own keyword names for this layer (the PyTorch docs apply)."""
        params = inspect.signature(self.cls.__init__).parameters.values()
        return [p.name for p in params if p.name not in ("self", "device", "dtype")
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _channels(key: str) -> Callable[[Shape], dict[str, Any]]:
    return lambda shape: {key: shape[0]}


def _catalogue() -> dict[str, LayerKind]:
    kinds: list[LayerKind] = [
        LayerKind(nn.Linear, "fc", (1,), lambda s: {"in_features": s[-1]}),
        LayerKind(nn.Flatten, "flatten"),
        LayerKind(nn.Dropout, "drop"),
        LayerKind(nn.Dropout2d, "drop", (3,)),
        LayerKind(nn.LayerNorm, "ln", None, lambda s: {"normalized_shape": list(s)}, must_agree=False),
        LayerKind(nn.GroupNorm, "gn", None, _channels("num_channels")),
        LayerKind(nn.BatchNorm1d, "bn", (1, 2), _channels("num_features")),
    ]
    for n in (1, 2, 3):
        spatial = (n + 1,)
        kinds += [
            LayerKind(getattr(nn, f"Conv{n}d"), "conv", spatial, _channels("in_channels")),
            LayerKind(getattr(nn, f"MaxPool{n}d"), "pool", spatial),
            LayerKind(getattr(nn, f"AvgPool{n}d"), "pool", spatial),
            LayerKind(getattr(nn, f"InstanceNorm{n}d"), "inorm", spatial, _channels("num_features")),
        ]
        if n > 1:
            kinds.append(LayerKind(getattr(nn, f"BatchNorm{n}d"), "bn", spatial, _channels("num_features")))
        kinds += [
            LayerKind(getattr(nn, f"AdaptiveAvgPool{n}d"), "pool", spatial),
            LayerKind(getattr(nn, f"AdaptiveMaxPool{n}d"), "pool", spatial),
        ]
    for act in (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity):
        kinds.append(LayerKind(act, act.__name__.lower()))
    return {kind.name: kind for kind in kinds}


CATALOGUE: dict[str, LayerKind] = _catalogue()
COMPOSITES = ("repeat", "residual")


class Residual(nn.Module):
    """y = body(x) + shortcut(x): the shortcut is nn.Identity, or a projection when the
    body changes the shape (He et al. 2016, option B)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)
