"""The lecture's points made visible by the builder: the receptive field and the memory of
each layer, the warning when two linear layers compose into one, and the lecture's models
against their published shapes. Expected numbers are worked out here by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnn_cli import data
from cnn_cli.builder import build_from_config, build_model
from cnn_cli.errors import UserError
from helpers import compose


MODELS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml"))
# the dataset each shipped model is meant for (the others: CIFAR-sized random pictures)
DATASETS = {"lenet5": ["dataset=mnist"], "lenet5_bn": ["dataset=mnist"], "lenet5_1998": ["dataset=mnist"],
            "mlp": ["dataset=mnist"], "imu_cnn1d": ["dataset=basic_motions"],
            "voxel_cnn3d": ["dataset=random", "dataset.input_shape=[1,16,16,16]"],
            "alexnet": ["dataset=random", "dataset.input_shape=[3,227,227]"]}


def build(model: str, *overrides: str):
    cfg = compose("summary", f"model={model}", *DATASETS.get(model, ["dataset=random"]), *overrides)
    data.resolve(cfg.dataset)  # as cnn-summary does: the dataset's checks first
    return build_from_config(cfg)


def conv(out: int, k: int, **kw) -> dict:
    return {"conv2d": {"out_channels": out, "kernel_size": k, **kw}}


def test_receptive_field_of_a_stride_1_stack_is_1_plus_L_times_K_minus_1():
    built = build_model([conv(4, 3), "relu", conv(4, 3), "relu", conv(4, 3), "relu"], (1, 16, 16))
    assert [row.receptive_field for row in built.rows] == [(3, 3)] * 2 + [(5, 5)] * 2 + [(7, 7)] * 2


def test_receptive_field_grows_by_the_jump_of_strides_pools_and_dilation():
    # conv 3 s2: 1 + 2 = 3, jump 2; pool 2 s2: 3 + 1*2 = 5, jump 4; conv 3 d2 (spans 5): 5 + 4*4 = 21
    built = build_model([conv(4, 3, stride=2), "relu", {"maxpool2d": {"kernel_size": 2}}, conv(4, 3, dilation=2,
                                                                                             padding=2)], (1, 64, 64))
    assert [row.receptive_field for row in built.rows] == [(3, 3), (3, 3), (5, 5), (21, 21)]
    assert built.receptive_field == (21, 21)


def test_lenet5_receptive_field_and_memory_per_layer():
    built = build("lenet5")
    # conv 5: 5; pool 2: 6 (jump 2); conv 5: 6 + 4*2 = 14; pool 2: 14 + 1*2 = 16
    assert [row.receptive_field for row in built.rows] == [(5, 5), (5, 5), (6, 6), (14, 14), (14, 14), (16, 16),
                                                           None, None, None, None]
    assert [row.memory for row in built.rows] == [4 * n for n in (20 * 28 * 28, 20 * 28 * 28, 20 * 14 * 14,
                                                                  50 * 14 * 14, 50 * 14 * 14, 50 * 7 * 7, 2450,
                                                                  500, 500, 10)]
    assert built.memory == 4 * 28 * 28 + sum(row.memory for row in built.rows)


def test_global_pooling_sees_the_whole_input_and_a_residual_takes_its_body_path():
    built = build("resnet20")
    stem = (3, 3)
    field, jump = 3, 1  # each block: two 3x3 convs, the first with the block's stride
    for stride in [1, 1, 1, 2, 1, 1, 2, 1, 1]:
        field += 2 * jump
        jump *= stride
        field += 2 * jump
    by_name = {row.name: row.receptive_field for row in built.rows}
    assert by_name["res9"] == by_name["res9.body.bn2"] == (field, field)  # the larger path: the body
    assert by_name["conv1"] == stem
    assert by_name["pool1"] == (field + 7 * jump,) * 2  # the 8 x 8 map averaged: a window of 8 at jump 4


ALEXNET_SHAPES = [(96, 55, 55), (96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 27, 27), (256, 13, 13),
                  (384, 13, 13), (384, 13, 13), (384, 13, 13), (384, 13, 13), (256, 13, 13), (256, 13, 13),
                  (256, 6, 6), (9216,), (9216,), (4096,), (4096,), (4096,), (4096,), (4096,), (1000,)]


def test_alexnet_has_the_published_shapes_and_60_million_parameters():
    built = build("alexnet", "dataset.num_classes=1000")
    assert [row.shape for row in built.rows] == ALEXNET_SHAPES
    assert built.rows[0].weight == "96 x 3 x 11 x 11"
    # by hand: the paper's two groups halve the inputs of conv2, conv4 and conv5 (60,965,224: 60 million)
    by_hand = (96 * 3 * 121 + 96 + 256 * 48 * 25 + 256 + 384 * 256 * 9 + 384 + 384 * 192 * 9 + 384 + 256 * 192 * 9
               + 256 + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
    assert built.params == by_hand
    assert built.rows[0].receptive_field == (11, 11) and built.rows[0].memory == 96 * 55 * 55 * 4


def test_lenet5_1998_is_lecun_s():
    built = build("lenet5_1998")
    assert [row.shape for row in built.rows] == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10),
                                                 (16, 10, 10), (16, 5, 5), (400,), (120,), (120,), (84,), (84,),
                                                 (10,)]
    assert built.params == 156 + 2416 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10  # 61,706
    assert [type(m).__name__ for m in built.model][:3] == ["Conv2d", "Tanh", "AvgPool2d"]


@pytest.mark.parametrize("model", MODELS)
def test_no_shipped_model_stacks_two_linear_layers(model):
    assert not [w for w in build(model).warnings if "compose" in w]


def test_two_convs_with_nothing_between_compose_into_one_larger_convolution():
    built = build_model([conv(4, 5), conv(4, 5), "relu", "flatten", {"linear": {"out_features": 3}}], (1, 12, 12))
    assert built.warnings == ["conv1 (5x5) and conv2 (5x5) compose into a single linear 9x9 convolution: add an "
                              "activation between them (e.g. relu)"]


def test_batchnorm_avgpool_flatten_and_dropout_do_not_separate_linear_layers():
    layers = [conv(4, 3), {"batchnorm2d": {}}, {"avgpool2d": {"kernel_size": 2}}, {"dropout": {"p": 0.1}},
              conv(4, 3), "flatten", {"dropout": {"p": 0.5}}, {"linear": {"out_features": 3}}]
    warnings = build_model(layers, (1, 12, 12)).warnings
    # 3, then the pool: 3 + 1 = 4 at jump 2, then 3 more at jump 2: 4 + 2 * 2 = 8
    assert warnings == [
        "conv1 (3x3) and conv2 (3x3) compose into a single linear 8x8 convolution: add an activation between them "
        "(e.g. relu)",
        "conv2 (3x3) and fc1 (36 -> 3) compose into a single linear layer: add an activation between them (e.g. relu)"]


@pytest.mark.parametrize("between", ["relu", "tanh", "maxpool2d", "groupnorm"])
def test_a_nonlinear_layer_between_silences_the_warning(between):
    middle = {"groupnorm": {"groupnorm": {"num_groups": 2}}, "maxpool2d": {"maxpool2d": {"kernel_size": 2}}}
    built = build_model([conv(4, 3), middle.get(between, between), conv(4, 3)], (1, 12, 12))
    assert built.warnings == []


def test_the_final_linear_after_a_nonlinearity_and_a_residual_sum_do_not_warn():
    layers = [conv(4, 3, padding=1), {"residual": {"layers": [conv(4, 3, padding=1)]}}, conv(4, 3), "relu",
              "flatten", {"linear": {"out_features": 3}}]
    assert build_model(layers, (1, 8, 8)).warnings == []


def test_memory_column_sums_to_the_total_in_kb():
    built = build("alexnet")
    assert built.rows[0].memory == 96 * 55 * 55 * 4  # 1,134.4 KB per image
    total = 3 * 227 * 227 * 4 + sum(4 * int(torch.tensor(row.shape).prod()) for row in built.rows)
    assert built.memory == total


@pytest.mark.parametrize("model,shape", [("imu_cnn1d", (6, 100)), ("lenet5_1998", (1, 28, 28)),
                                         ("voxel_cnn3d", (1, 16, 16, 16))])
def test_feature_maps_draw_every_conv_layer_of_every_rank(model, shape):
    from cnn_cli.tb import feature_maps

    built = build(model, "dataset=random", f"dataset.input_shape=[{','.join(map(str, shape))}]")
    pictures = dict(feature_maps(built.model, torch.randn(2, *shape)))
    convs = [row.name for row in built.rows if row.label.startswith("Conv")]
    assert list(pictures) == [f"pictures/features_{name}" for name in convs]
    for image in pictures.values():  # grey, 0..1, with something drawn
        assert image.dim() == 3 and image.shape[0] == 1 and 0 <= image.min() < image.max() <= 1
    assert built.model.training  # left as it was found


NORMS = {"batchnorm": ("BatchNorm2d", "BatchNorm1d"), "groupnorm": ("GroupNorm", "GroupNorm"),
         "layernorm": ("LayerNorm", "LayerNorm"), "instancenorm": ("InstanceNorm2d", "Identity"),
         "none": ("Identity", "Identity")}


@pytest.mark.parametrize("norm", NORMS)
def test_model_norm_swaps_the_normalisation_of_lenet5_bn(norm):
    built = build("lenet5_bn", f"model.norm={norm}")
    kinds = [type(m).__name__ for m in built.model]
    after_conv, after_linear = NORMS[norm]
    assert kinds[1] == kinds[5] == after_conv and kinds[10] == after_linear
    # a norm with its own shift makes the bias before it redundant; without one the bias stays
    shifts = norm in ("batchnorm", "groupnorm", "layernorm")
    assert (built.model[0].bias is None) == shifts and (built.model[9].bias is None) == shifts
    assert not built.warnings


def test_an_adaptive_pool_larger_than_its_input_keeps_the_field_and_in_a_residual_is_one_line():
    upsample = {"adaptiveavgpool2d": {"output_size": 8}}
    built = build_model([conv(4, 3, padding=1), upsample, conv(4, 3, padding=1)], (1, 4, 4))
    assert built.output_shape == (4, 8, 8) and built.receptive_field == (5, 5)
    with pytest.raises(UserError, match="no 1x1 strided projection turns 4 x 4 x 4 into 4 x 8 x 8"):
        build_model([conv(4, 3, padding=1), {"residual": {"layers": [upsample, conv(4, 3, padding=1)]}}], (1, 4, 4))
