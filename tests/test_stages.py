"""`stage: {block, out_channels, times, stride}`: a network's stage in one line that builds
exactly the layers it stands for, and blocks that are the ones torchvision builds."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnn_cli.builder import build_model
from cnn_cli.errors import UserError
from cnn_cli.summary import format_table


def conv(channels: int, stride: int = 1, kernel_size: int = 3) -> dict:
    return {"conv2d": {"out_channels": channels, "kernel_size": kernel_size, "stride": stride,
                       "padding": kernel_size // 2, "bias": False}}


def test_a_stage_builds_the_layers_it_stands_for_with_the_same_names_and_table() -> None:
    basic = [{"residual": {"layers": [conv(32, 2), "batchnorm2d", "relu", conv(32), "batchnorm2d"]}}, "relu",
             {"residual": {"layers": [conv(32), "batchnorm2d", "relu", conv(32), "batchnorm2d"]}}, "relu"]
    written_out = build_model(basic, (16, 8, 8))
    stage = build_model([{"stage": {"block": "basic", "out_channels": 32, "times": 2, "stride": 2}}], (16, 8, 8))

    assert format_table(stage) == format_table(written_out)
    assert {k: v.shape for k, v in stage.model.state_dict().items()} == \
        {k: v.shape for k, v in written_out.model.state_dict().items()}
    assert stage.output_shape == (32, 4, 4)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_a_stage_takes_the_convs_and_norms_of_its_input_rank(rank: int) -> None:
    built = build_model([{"stage": {"block": "conv_bn_relu", "out_channels": 4, "times": 2}}], (2, *[6] * rank))
    assert [type(m).__name__ for m in built.model] == [f"Conv{rank}d", f"BatchNorm{rank}d", "ReLU"] * 2
    assert built.output_shape == (4, *[6] * rank)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("block, torchvision_block, planes",
                         [("basic", BasicBlock, 32), ("bottleneck", Bottleneck, 16)])
def test_a_block_computes_what_torchvisions_block_computes(block: str, torchvision_block: type, planes: int,
                                                           stride: int) -> None:
    """The same parameters in the same order: loaded into ours, the outputs agree."""
    channels = planes * torchvision_block.expansion
    shortcut = nn.Sequential(nn.Conv2d(16, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))
    reference = torchvision_block(16, planes, stride=stride, downsample=shortcut).eval()
    ours = build_model([{"stage": {"block": block, "out_channels": channels, "stride": stride}}], (16, 8, 8)).model
    theirs = reference.state_dict()
    assert len(ours.state_dict()) == len(theirs)
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.values())))
    x = torch.randn(3, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference(x))


@pytest.mark.parametrize("stage, shape, message", [
    ({"block": "resnet", "out_channels": 8}, (3, 8, 8),
     "model.layers[0] (stage): block must be one of conv_bn_relu, basic, bottleneck, inverted, got 'resnet'"),
    ({"block": ["basic"], "out_channels": 8}, (3, 8, 8), "block must be one of conv_bn_relu, basic, bottleneck"),
    ({"block": "basic"}, (3, 8, 8), "model.layers[0] (stage): write stage as {block: conv_bn_relu | basic | "
                                    "bottleneck | inverted, out_channels: C, times: N, stride: S}"),
    ({"block": "basic", "out_channels": 8, "depth": 3}, (3, 8, 8), "got keys ['block', 'depth', 'out_channels']"),
    ({"block": "basic", "out_channels": 8, "expand": 4}, (3, 8, 8),
     "model.layers[0] (stage): expand is for inverted blocks; a basic block has a fixed shape, leave expand out"),
    ({"block": "basic", "out_channels": 8, "times": 0}, (3, 8, 8),
     "model.layers[0] (stage): times must be a whole number from 1 to 10,000, got 0"),
    ({"block": "basic", "out_channels": 8, "stride": True}, (3, 8, 8), "stride must be a whole number"),
    ({"block": "basic", "out_channels": -8}, (3, 8, 8), "out_channels must be a whole number"),
    ({"block": "basic", "out_channels": 8}, (12,), "a stage needs a map (C x L, C x H x W or C x D x H x W), "
                                                   "but gets 12"),
    ({"block": "conv_bn_relu", "out_channels": 2_000_000_000, "times": 3}, (3, 4, 4),
     "model.layers[0].stage[0] (conv2d, block 1 of 3): the model reaches 54,000,000,000 parameters"),
])
def test_a_bad_stage_is_one_line_naming_it(stage: dict, shape: tuple, message: str) -> None:
    with pytest.raises(UserError) as caught:
        build_model([{"stage": stage}], shape)
    assert message in str(caught.value) and "\n" not in str(caught.value)
