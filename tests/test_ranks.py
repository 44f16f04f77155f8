"""1-D, 2-D and 3-D samples: normalisation, augmentation, memory format, batchnorm folding,
TensorBoard pictures, and cnn-train / cnn-eval end to end on each rank."""

from __future__ import annotations

import pytest
import torch

from cnn_cli import data
from cnn_cli.builder import build_model
from cnn_cli.fuse import fuse_batchnorm

SHAPES = {1: (3, 20), 2: (3, 9, 8), 3: (2, 5, 6, 7)}


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_normalize_scales_uint8_pixels_and_takes_floats_as_they_are_for_every_rank(rank: int) -> None:
    c = SHAPES[rank][0]
    mean, std = [0.1 * (i + 1) for i in range(c)], [0.5 + i for i in range(c)]
    pixels = torch.randint(0, 256, (4, *SHAPES[rank]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = data.normalize(pixels, mean, std)
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    for ch in range(c):  # channel ch, every sample and position, with its own mean and std
        torch.testing.assert_close(out[:, ch], (pixels[:, ch].float() / 255 - mean[ch]) / std[ch])
    readings = torch.randn(4, *SHAPES[rank]) * 9  # sensor values: no /255
    out = data.normalize(readings, torch.tensor(mean), torch.tensor(std))
    torch.testing.assert_close(out[:, -1], (readings[:, -1] - mean[-1]) / std[-1])
    assert not torch.equal(out, readings)  # a new tensor; the data is never changed in place
    torch.testing.assert_close(data.normalize(readings, mean, std) * torch.tensor(std).view(1, -1, *[1] * rank)
                               + torch.tensor(mean).view(1, -1, *[1] * rank), readings)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_batchnorm_folds_into_conv_and_linear_of_every_rank(rank: int) -> None:
    layers = [{f"conv{rank}d": {"out_channels": 5, "kernel_size": 3, "bias": False}}, f"batchnorm{rank}d", "relu",
              {f"conv{rank}d": {"out_channels": 4, "kernel_size": 1, "groups": 1}}, f"batchnorm{rank}d", "flatten",
              {"linear": {"out_features": 6}}, "batchnorm1d", "relu", {"linear": {"out_features": 3}}]
    model = build_model(layers, SHAPES[rank]).model
    for _ in range(5):  # non-trivial running statistics and affine parameters
        model(torch.randn(16, *SHAPES[rank]) * 2 + 0.5)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.eval()
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())  # a copy
    x = torch.randn(32, *SHAPES[rank])
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused(x), atol=1e-5, rtol=1e-4)
