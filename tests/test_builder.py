"""The builder against hand-written PyTorch: same networks, same outputs, same sizes.

Every expected number here is computed from the architecture by the test itself, never by
asking the built model for it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnn_cli.builder import build_from_config, build_model
from cnn_cli.errors import UserError
from cnn_cli.layers import CATALOGUE
from helpers import compose

CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
INPUTS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and steady on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(model: str, dataset: str, *overrides: str):
    return build_from_config(compose("summary", f"model={model}", f"dataset={dataset}", *overrides))


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every batchnorm non-trivial affine parameters and running statistics, so that
    a mismatch in where a norm sits shows up in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def copy_by_position(src: nn.Module, dst: nn.Module) -> None:
    """Copy src's parameters and buffers into dst in state_dict order, shapes asserted equal."""
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    assert len(src_sd) == len(dst_sd), (list(src_sd), list(dst_sd))
    new = OrderedDict()
    for (src_key, value), (dst_key, slot) in zip(src_sd.items(), dst_sd.items()):
        assert value.shape == slot.shape, f"{src_key} {tuple(value.shape)} vs {dst_key} {tuple(slot.shape)}"
        new[dst_key] = value.clone()
    dst.load_state_dict(new, strict=True)


# --------------------------------------------------------------------------------------
# Same network by hand


def test_lenet5_matches_hand_written_torch():
    built = build("lenet5", "mnist")
    hand = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 20, kernel_size=5, padding=2)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("conv2", nn.Conv2d(20, 50, kernel_size=5, padding=2)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2, 2)),
        ("flatten1", nn.Flatten()),
        ("fc1", nn.Linear(50 * 7 * 7, 500)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(500, 10)),
    ]))
    # by name: the built model's state_dict keys are the hand-written ones
    hand.load_state_dict(built.model.state_dict(), strict=True)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    built.model.eval(), hand.eval()
    with torch.no_grad():
        ours, theirs = built.model(x), hand(x)
    assert ours.shape == (4, 10)
    assert torch.allclose(ours, theirs, atol=1e-6)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(3):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def test_resnet20_matches_hand_written_torch():
    built = build("resnet20", "cifar10")
    randomise_norms(built.model)
    hand = ResNet20(10)
    copy_by_position(built.model, hand)
    built.model.eval(), hand.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = built.model(x), hand(x)
    assert ours.shape == (3, 10)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


# --------------------------------------------------------------------------------------
# Parameter counts from the architecture


def conv(cin, cout, k, bias=True):
    return cout * cin * k * k + (cout if bias else 0)


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def bn(c):
    return 2 * c


def expected_params(model: str, dataset: str) -> int:
    n = CLASSES[dataset]
    c_in, h, w = INPUTS[dataset]
    if model == "mlp":
        return linear(c_in * h * w, 256) + linear(256, n)
    if model == "lenet5":
        return conv(1, 20, 5) + conv(20, 50, 5) + linear(50 * 7 * 7, 500) + linear(500, n)
    if model == "lenet5_bn":
        return (conv(1, 20, 5, False) + bn(20) + conv(20, 50, 5, False) + bn(50)
                + linear(50 * 7 * 7, 500, False) + bn(500) + linear(500, n))
    if model == "alexnet_cifar":
        chans = [c_in, 64, 192, 384, 256, 256]
        convs = sum(conv(a, b, 3) for a, b in zip(chans, chans[1:]))
        side = h // 2 // 2 // 2
        return convs + linear(256 * side * side, 1024) + linear(1024, 1024) + linear(1024, n)
    if model == "vgg11_bn":
        plan = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
        total, cin, side = 0, c_in, h
        for item in plan:
            if item == "M":
                side //= 2
            else:
                total += conv(cin, item, 3, False) + bn(item)
                cin = item
        return total + linear(cin * side * side, n)
    if model == "resnet20":
        total, cin = conv(c_in, 16, 3, False) + bn(16), 16
        for cout in (16, 32, 64):
            for _ in range(3):
                total += conv(cin, cout, 3, False) + bn(cout) + conv(cout, cout, 3, False) + bn(cout)
                if cin != cout:
                    total += conv(cin, cout, 1, False) + bn(cout)
                cin = cout
        return total + linear(64, n)
    raise AssertionError(model)


CATALOGUE_CASES = [(m, "mnist") for m in ("mlp", "lenet5", "lenet5_bn")] + [
    (m, d) for m in ("alexnet_cifar", "vgg11_bn", "resnet20") for d in ("cifar10", "cifar100")]


@pytest.mark.parametrize("model,dataset", CATALOGUE_CASES)
def test_catalogue_model_builds_runs_and_counts(model, dataset):
    built = build(model, dataset)
    n = CLASSES[dataset]
    assert built.input_shape == INPUTS[dataset]
    assert built.output_shape == (n,)
    built.model.eval()
    with torch.no_grad():
        out = built.model(torch.randn(2, *INPUTS[dataset]))
    assert out.shape == (2, n)
    assert built.params == expected_params(model, dataset)
    # the table's per-row params add up to the same total (rows are the explanation)
    assert sum(row.params for row in built.rows) == expected_params(model, dataset)


def test_known_totals():
    assert build("lenet5", "mnist").params == 1_256_080  # the lecture's table
    assert build("resnet20", "cifar10").params == 272_474  # He et al.: 0.27M


def test_build_from_config_rejects_wrong_class_count():
    with pytest.raises(UserError, match=r"10 classes"):
        build("lenet5", "mnist", "model.layers.9.linear.out_features=7")


# --------------------------------------------------------------------------------------
# The lecture's LeNet-5 table


def test_lenet5_rows_match_lecture_table():
    built = build("lenet5", "mnist")
    assert [r.name for r in built.rows] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten1", "fc1", "relu3", "fc2"]
    assert [r.shape for r in built.rows] == [
        (20, 28, 28), (20, 28, 28), (20, 14, 14), (50, 14, 14), (50, 14, 14), (50, 7, 7),
        (2450,), (500,), (500,), (10,)]
    assert [r.weight for r in built.rows] == [
        "20 x 1 x 5 x 5", "", "", "50 x 20 x 5 x 5", "", "", "", "2450 x 500", "", "500 x 10"]
    assert built.receptive_field == (16, 16)
    macs = (28 * 28 * 20) * (1 * 5 * 5) + (14 * 14 * 50) * (20 * 5 * 5) + 2450 * 500 + 500 * 10  # 6,522,000
    assert built.macs == macs
    assert built.warnings == []


# --------------------------------------------------------------------------------------
# The output-size formula against PyTorch


def trailing_unread(w: int, k: int, p: int, s: int, d: int) -> int:
    """How many input positions at the end of an axis no window reads, measured with a
    real convolution's gradient (geometry only: identical for conv and pooling)."""
    x = torch.zeros(1, 1, 1, w, requires_grad=True)
    weight = torch.ones(1, 1, 1, k)
    nn.functional.conv2d(x, weight, stride=(1, s), padding=(0, p), dilation=(1, d)).sum().backward()
    read = (x.grad[0, 0, 0] != 0).tolist()
    return len(read) - 1 - max(i for i, r in enumerate(read) if r)


GRID = list(itertools.product(range(5, 13), range(1, 6), range(0, 3), range(1, 4), (1, 2)))


@pytest.mark.parametrize("layer", ["conv2d", "maxpool2d"])
def test_output_size_formula_against_pytorch(layer):
    checked = rejected = warned = 0
    for w, k, p, s, d in GRID:
        args = {"kernel_size": k, "padding": p, "stride": s, "dilation": d}
        if layer == "conv2d":
            args["out_channels"] = 1
            torch_layer = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
        else:
            try:
                torch_layer = nn.MaxPool2d(k, stride=s, padding=p, dilation=d)
            except (ValueError, RuntimeError):
                torch_layer = None
        case = f"{layer} W={w} K={k} P={p} S={s} D={d}"
        if w + 2 * p - d * (k - 1) - 1 < 0:
            with pytest.raises(UserError):
                build_model([{layer: args}], (1, w, w))
            rejected += 1
            continue
        try:
            expected = None if torch_layer is None else tuple(torch_layer(torch.zeros(1, 1, w, w)).shape[1:])
        except (ValueError, RuntimeError):
            expected = None
        if expected is None:  # PyTorch refuses it (e.g. pool padding over half the kernel)
            with pytest.raises(UserError):
                build_model([{layer: args}], (1, w, w))
            rejected += 1
            continue
        built = build_model([{layer: args}], (1, w, w))
        assert built.output_shape == expected, case
        # positions past the end of PyTorch's last window (windows start at -P, every S)
        span = d * (k - 1) + 1
        last_end = -p + s * (expected[-1] - 1) + span  # one past the last position it reads
        lost = max(w - last_end, 0)
        assert lost == max((w + 2 * p - span) % s - p, 0), case
        if d == 1 and k >= s:  # windows tile without holes: measure it with a real gradient
            assert lost == trailing_unread(w, k, p, s, d), case
        tail = [msg for msg in built.warnings if "ignored" in msg]
        gaps = [msg for msg in built.warnings if "never read" in msg]
        assert len(tail) + len(gaps) == len(built.warnings), built.warnings
        # a kernel narrower than its stride skips rows between windows: warned for rows and columns
        assert len(gaps) == (2 if span < s else 0), (case, built.warnings)
        if lost > 0:
            assert len(tail) == 2, (case, built.warnings)  # rows and columns
            assert all(f"the last {lost} input" in msg for msg in tail), case
            warned += 1
        else:
            assert tail == [], (case, built.warnings)
        checked += 1
    # the grid exercises all three outcomes
    assert checked > 100 and rejected > 0 and warned > 10


def test_ceil_mode_pool_does_not_warn():
    built = build_model([{"maxpool2d": {"kernel_size": 2, "ceil_mode": True}}], (1, 7, 7))
    assert built.output_shape == (1, 4, 4)
    assert built.warnings == []


def test_stride_warning_names_axis_and_position():
    built = build_model([{"conv2d": {"out_channels": 2, "kernel_size": [3, 1], "stride": 2}}], (1, 8, 9))
    # rows: (8 - 3) % 2 = 1 lost at the end; columns: (9 - 1) % 2 = 0 lost at the end, but a
    # 1-wide kernel with stride 2 never reads every other column
    assert len(built.warnings) == 2
    assert all(w.startswith("model.layers[0] (conv2d): ") for w in built.warnings)
    assert "the last 1 input rows are ignored" in built.warnings[0]
    assert "1 of every 2 input columns fall between windows" in built.warnings[1]


# --------------------------------------------------------------------------------------
# Child names


def test_lenet5_bn_child_names():
    built = build("lenet5_bn", "mnist")
    assert [n for n, _ in built.model.named_children()] == [
        "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "flatten1", "fc1", "bn3",
        "relu3", "fc2"]
    keys = list(built.model.state_dict())
    assert keys[0] == "conv1.weight"  # no bias: bias=false in the config
    assert "conv1.bias" not in keys and "fc1.bias" not in keys
    assert {"bn1.running_mean", "bn3.running_var", "fc2.bias"} <= set(keys)
    prefixes = list(OrderedDict.fromkeys(k.split(".")[0] for k in keys))
    assert prefixes == ["conv1", "bn1", "conv2", "bn2", "fc1", "bn3", "fc2"]
    assert [r.name for r in built.rows] == [n for n, _ in built.model.named_children()]


def test_resnet20_child_names():
    built = build("resnet20", "cifar10")
    keys = set(built.model.state_dict())
    assert "res1.body.conv1.weight" in keys
    assert "res1.body.bn2.running_var" in keys
    assert not any(k.startswith("res1.shortcut") for k in keys)  # identity shortcut
    assert "res4.shortcut.0.weight" in keys  # first block of stage 2 projects 16 -> 32
    assert tuple(built.model.state_dict()["res4.shortcut.0.weight"].shape) == (32, 16, 1, 1)
    assert "res7.shortcut.0.weight" in keys and "res7.shortcut.1.running_mean" in keys
    assert [n for n, _ in built.model.named_children()][-3:] == ["pool1", "flatten1", "fc1"]
    names = [r.name for r in built.rows]
    assert "res4.body.conv1" in names and "res4.shortcut" in names


# --------------------------------------------------------------------------------------
# Inferred sizes, other layers


def forward_shape(built, shape):
    built.model.eval()
    with torch.no_grad():
        return tuple(built.model(torch.zeros(2, *shape)).shape[1:])


def test_in_channels_written_and_agreeing_is_accepted():
    built = build_model([{"conv2d": {"in_channels": 3, "out_channels": 8, "kernel_size": 3}}], (3, 10, 10))
    assert built.output_shape == (8, 8, 8)


def test_in_channels_disagreeing_is_rejected():
    with pytest.raises(UserError, match=r"in_channels=1.*gives 3"):
        build_model([{"conv2d": {"in_channels": 1, "out_channels": 8, "kernel_size": 3}}], (3, 10, 10))


def test_in_features_disagreeing_is_rejected():
    with pytest.raises(UserError, match=r"in_features"):
        build_model(["flatten", {"linear": {"in_features": 5, "out_features": 2}}], (1, 4, 4))


def test_layernorm_defaults_to_incoming_shape():
    built = build_model([{"conv2d": {"out_channels": 4, "kernel_size": 3}}, "layernorm"], (1, 8, 8))
    ln = built.model[1]
    assert isinstance(ln, nn.LayerNorm)
    assert tuple(ln.normalized_shape) == (4, 6, 6)
    assert tuple(ln.weight.shape) == (4, 6, 6)
    assert built.rows[1].params == 2 * 4 * 6 * 6
    # a trailing-axes normalized_shape may be written (it need not equal the whole shape)
    built = build_model([{"layernorm": {"normalized_shape": [6]}}], (4, 6))
    assert tuple(built.model[0].normalized_shape) == (6,)


def test_groupnorm():
    built = build_model([{"conv2d": {"out_channels": 6, "kernel_size": 1}}, {"groupnorm": {"num_groups": 3}}],
                        (2, 5, 5))
    assert built.model[1].num_channels == 6 and built.model[1].num_groups == 3
    assert forward_shape(built, (2, 5, 5)) == (6, 5, 5)
    with pytest.raises(UserError, match=r"num_groups=4"):
        build_model([{"groupnorm": {"num_groups": 4}}], (6, 5, 5))


def test_instancenorm2d():
    built = build_model([{"instancenorm2d": {"affine": True}}], (3, 5, 5))
    assert built.model[0].num_features == 3
    assert built.params == 6
    assert forward_shape(built, (3, 5, 5)) == (3, 5, 5)


def test_conv1d_on_sequence():
    built = build_model([{"conv1d": {"out_channels": 4, "kernel_size": 3, "stride": 2}}, "relu",
                         {"maxpool1d": {"kernel_size": 2}}], (2, 21))
    # (21 - 3) / 2 + 1 = 10, pooled to 5
    assert built.output_shape == (4, 5)
    assert forward_shape(built, (2, 21)) == (4, 5)
    assert built.rows[0].weight == "4 x 2 x 3"
    assert built.receptive_field == (3 + 1 * 2,)


def test_conv3d_on_volume():
    built = build_model([{"conv3d": {"out_channels": 3, "kernel_size": [1, 3, 3], "padding": [0, 1, 1]}},
                         {"batchnorm3d": None}, {"avgpool3d": {"kernel_size": 2}}], (2, 4, 6, 8))
    assert built.output_shape == (3, 2, 3, 4)
    assert forward_shape(built, (2, 4, 6, 8)) == (3, 2, 3, 4)
    assert built.params == 3 * 2 * 1 * 3 * 3 + 3 + 2 * 3


@pytest.mark.parametrize("padding,out", [("same", (5, 9, 9)), ("valid", (5, 5, 5))])
def test_string_padding(padding, out):
    built = build_model([{"conv2d": {"out_channels": 5, "kernel_size": 5, "padding": padding}}], (1, 9, 9))
    assert built.output_shape == out
    assert forward_shape(built, (1, 9, 9)) == out


def test_same_padding_with_stride_is_a_user_error():
    with pytest.raises(UserError, match=r"model.layers\[0\] \(conv2d\)"):
        build_model([{"conv2d": {"out_channels": 5, "kernel_size": 3, "padding": "same", "stride": 2}}],
                    (1, 9, 9))


def test_adaptiveavgpool2d_and_dropout2d():
    built = build_model([{"conv2d": {"out_channels": 4, "kernel_size": 3}}, {"dropout2d": {"p": 0.3}},
                         {"adaptiveavgpool2d": {"output_size": [2, 3]}}, "flatten",
                         {"linear": {"out_features": 2}}], (1, 11, 11))
    assert [r.shape for r in built.rows] == [(4, 9, 9), (4, 9, 9), (4, 2, 3), (24,), (2,)]
    assert forward_shape(built, (1, 11, 11)) == (2,)


ACTIVATIONS = ["relu", "relu6", "leakyrelu", "elu", "gelu", "silu", "tanh", "sigmoid", "softplus", "identity"]


def test_activation_list_is_the_catalogue_list():
    activations = {name for name, kind in CATALOGUE.items()
                   if kind.cls.__module__ == "torch.nn.modules.activation" or kind.cls is nn.Identity}
    assert activations == set(ACTIVATIONS)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_builds(act):
    built = build_model([{"conv2d": {"out_channels": 2, "kernel_size": 3}}, act, "flatten",
                         {"linear": {"out_features": 3}}], (1, 5, 5))
    assert built.output_shape == (3,)
    assert built.rows[1].name == f"{act}1"
    assert forward_shape(built, (1, 5, 5)) == (3,)


def test_activation_arguments_pass_through():
    built = build_model([{"leakyrelu": {"negative_slope": 0.2}}], (3,))
    assert built.model[0].negative_slope == 0.2
    with pytest.raises(UserError, match=r"negative_slope must be a number"):
        build_model([{"leakyrelu": {"negative_slope": "steep"}}], (3,))


def test_linear_on_map_asks_for_flatten():
    with pytest.raises(UserError, match=r"model.layers\[0\] \(linear\).*flatten"):
        build_model([{"linear": {"out_features": 3}}], (1, 4, 4))


def test_repeat_and_residual_identity():
    built = build_model([{"repeat": {"times": 2, "layers": [{"residual": {"layers": [
        {"conv2d": {"out_channels": 3, "kernel_size": 3, "padding": 1}}, "relu"]}}]}}], (3, 6, 6))
    assert [n for n, _ in built.model.named_children()] == ["res1", "res2"]
    assert built.params == 2 * conv(3, 3, 3)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        block = built.model.res1
        assert torch.allclose(block(x), block.body(x) + x)


# --------------------------------------------------------------------------------------
# Safety: a config names catalogue layers, never import paths


@pytest.mark.parametrize("name", ["torch.nn.Conv2d", "os.system", "_target_", "nn.ReLU", "__import__",
                                  "builtins.eval"])
def test_import_paths_are_not_layers(name):
    with pytest.raises(UserError, match=r"unknown layer"):
        build_model([name], (1, 4, 4))
    with pytest.raises(UserError, match=r"unknown layer"):
        build_model([{name: {"in_channels": 1, "out_channels": 1, "kernel_size": 1}}], (1, 4, 4))


def test_layer_names_may_be_written_as_pytorch_spells_them_or_with_underscores():
    spellings = [[{"Conv2d": {"out_channels": 2, "kernel_size": 3}}, "ReLU",
                  {"adaptive_avg_pool2d": {"output_size": 1}}, "Flatten", {"Linear": {"out_features": 3}}],
                 [{"conv2d": {"out_channels": 2, "kernel_size": 3}}, "relu",
                  {"adaptiveavgpool2d": {"output_size": 1}}, "flatten", {"linear": {"out_features": 3}}]]
    pytorch, ours = (build_model(layers, (1, 8, 8)) for layers in spellings)
    assert [type(m) for m in pytorch.model] == [type(m) for m in ours.model]
    assert list(pytorch.model.state_dict()) == list(ours.model.state_dict()) == [
        "conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"]


def test_target_key_inside_arguments_is_rejected():
    with pytest.raises(UserError, match=r"unknown argument '_target_'"):
        build_model([{"conv2d": {"_target_": "os.system", "out_channels": 1, "kernel_size": 1}}], (1, 4, 4))


def test_target_mapping_as_layer_is_rejected():
    with pytest.raises(UserError):
        build_model([{"_target_": "torch.nn.Conv2d", "in_channels": 1}], (1, 4, 4))
