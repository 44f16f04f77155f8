"""Batchnorm folding: at test time batchnorm is a fixed affine map, so it can be merged
into the conv (1-D, 2-D or 3-D) or linear layer right before it."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with each batchnorm (1d, 2d or 3d) folded into the conv
    or linear right before it in the same Sequential, and replaced by nn.Identity (so
    state_dict keys of the other layers keep their names).

    y = gamma (x - mu) / sqrt(var + eps) + beta, so W' = W * s and b' = (b - mu) * s + beta
    with s = gamma / sqrt(var + eps), one s per output channel whatever the weight's rank.
    """
    fused = copy.deepcopy(model).eval()
    _fuse_in(fused)
    return fused


def _fuse_in(seq: nn.Module) -> None:
    names = list(seq._modules)
    for prev, name in zip(names, names[1:]):
        layer, norm = seq._modules[prev], seq._modules[name]
        if isinstance(norm, _BatchNorm) and isinstance(layer, (_ConvNd, nn.Linear)) and norm.track_running_stats:
            _fold(layer, norm)
            seq._modules[name] = nn.Identity()
    for child in seq.children():
        _fuse_in(child)


@torch.no_grad()
def _fold(layer: nn.Module, norm: _BatchNorm) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale + (norm.bias if norm.affine else 0)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias = nn.Parameter(bias * scale + shift)
