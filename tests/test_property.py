"""A stack that builds must train: seeded random layer stacks over 1-D, 2-D and 3-D samples,
every catalogue layer and both composites, each trained in-process through the real
cnn-train path (prepare + train: one step, validation, test, TensorBoard, checkpoints),
then its checkpoint rebuilt from the stored config and its batchnorm folded.

    pytest tests/test_property.py                 # the default few dozen stacks
    pytest tests/test_property.py --stacks 500    # more, now and then (--stacks-seed to vary them)
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnn_cli import checkpoint, train
from cnn_cli.builder import build_from_config, build_model
from cnn_cli.errors import UserError
from cnn_cli.fuse import fuse_batchnorm
from cnn_cli.layers import BLOCKS, CATALOGUE, COMPOSITES
from helpers import compose


pytestmark = pytest.mark.slow  # dozens of real training runs, in process

Spec = Any  # a layer spec as a config writes it: "relu" or {"conv1d": {...}}
SHAPES = {1: [(2, 24), (5, 17), (1, 32)], 2: [(1, 12, 12), (3, 10, 9), (4, 8, 8)], 3: [(1, 6, 6, 6), (2, 5, 7, 6)]}


def layer_spec(name: str, shape: tuple[int, ...], rng: random.Random) -> Spec:
    """A random instance of catalogue layer `name` for an incoming `shape` (it may not fit:
    the builder decides, and an unfit proposal is simply not taken)."""
    cls = CATALOGUE[name].cls
    args: dict[str, Any] = {}
    if issubclass(cls, nn.modules.conv._ConvNd):
        args = {"out_channels": rng.randint(1, 6), "kernel_size": rng.randint(1, 3), "padding": rng.randint(0, 1),
                "stride": rng.randint(1, 2), "bias": rng.random() < 0.5}
    elif "AdaptiveAvg" in cls.__name__ or "AdaptiveMax" in cls.__name__:
        args = {"output_size": rng.randint(1, 3)}
    elif issubclass(cls, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        args = {"kernel_size": rng.randint(1, 3), "stride": rng.choice([None, 1, 2])}
    elif cls is nn.Linear:
        args = {"out_features": rng.randint(2, 8)}
    elif cls is nn.GroupNorm:
        args = {"num_groups": rng.choice([g for g in range(1, shape[0] + 1) if shape[0] % g == 0])}
    elif issubclass(cls, nn.modules.instancenorm._InstanceNorm):
        args = {"affine": rng.random() < 0.5, "track_running_stats": rng.random() < 0.5}
    elif issubclass(cls, nn.modules.dropout._DropoutNd):
        args = {"p": rng.choice([0.1, 0.5])}
    return {name: args} if args else name


def fits(layers: list[Spec], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape if the builder takes these layers, else None."""
    if not layers:
        return shape
    try:
        return build_model(layers, shape).output_shape
    except UserError:
        return None


def grow(layers: list[Spec], shape: tuple[int, ...], rng: random.Random, used: Counter, length: int,
         nested: bool = False) -> list[Spec]:
    """Append up to `length` layers that fit, preferring the least used so far (so a few dozen
    stacks cover the whole catalogue), now and then a residual, repeat or stage block (not nested)."""
    start = len(layers)
    for _ in range(length * 4):
        if len(layers) - start >= length:
            break
        out = fits(layers, shape)
        roll = rng.random() if not nested else 1.0
        if roll < 0.12 and len(out) > 1:
            body = grow([], out, rng, used, rng.randint(1, 3), nested=True)
            proposal = {"residual": {"layers": body}} if body else None
        elif roll < 0.2:
            body = grow([], out, rng, used, rng.randint(1, 2), nested=True)
            proposal = {"repeat": {"times": 2, "layers": body}} if body else None
        elif roll < 0.26 and len(out) > 1:
            proposal = {"stage": {"block": rng.choice(sorted(BLOCKS)), "out_channels": rng.choice([2, 4]),
                                  "times": rng.randint(1, 2), "stride": rng.randint(1, 2)}}
        else:
            names = sorted(CATALOGUE, key=lambda n: (used[n], rng.random()))
            proposal = layer_spec(names[0] if rng.random() < 0.7 else rng.choice(names), out, rng)
        if proposal is not None and fits([*layers, proposal], shape) is not None:
            layers.append(proposal)
            used[next(iter(proposal)) if isinstance(proposal, dict) else proposal] += 1
    return layers


def random_stack(index: int, seed: int, used: Counter) -> tuple[tuple[int, ...], list[Spec]]:
    """Stack `index`: ranks 1, 2, 3 in turn, a few layers, then flatten and one score per class."""
    rng = random.Random(seed * 1_000_003 + index)
    shape = rng.choice(SHAPES[index % 3 + 1])
    layers = grow([], shape, rng, used, rng.randint(2, 7))
    if len(fits(layers, shape)) > 1:
        layers.append("flatten")
        used["flatten"] += 1
    layers.append({"linear": {"out_features": 3}})
    used["linear"] += 1
    return shape, layers


def stacks(config: pytest.Config) -> list[tuple[tuple[int, ...], list[Spec]]]:
    used: Counter = Counter()
    seed = config.getoption("--stacks-seed")
    return [random_stack(i, seed, used) for i in range(config.getoption("--stacks"))]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" in metafunc.fixturenames:
        made = stacks(metafunc.config)
        metafunc.parametrize("stack", made, ids=[f"{i}-rank{len(s) - 1}" for i, (s, _) in enumerate(made)])


def test_the_default_stacks_cover_every_catalogue_layer_and_composite(pytestconfig: pytest.Config) -> None:
    used: Counter = Counter()
    for i in range(24):
        random_stack(i, 0, used)
    everything = set(CATALOGUE) | set(COMPOSITES)
    assert set(used) == everything, everything - set(used)


def test_a_stack_that_builds_trains_evaluates_checkpoints_and_folds(stack, tmp_path: Path) -> None:
    shape, layers = stack
    variety = len(layers)  # varies the augmentation from stack to stack, the same every run
    rank = len(shape) - 1
    for channels_last in (True, False):
        overrides = ["dataset=random", f"dataset.input_shape={list(shape)}", "dataset.num_images=[14,6]",
                     "dataset.val_size=6", "dataset.num_classes=3", "dataset.classes=[a,b,c]",
                     f"dataset.augment.crop_padding={variety % 3}",
                     f"dataset.augment.flip={rank > 1 and variety % 2 == 0}",
                     "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.progress=false",
                     "trainer.device=cpu", f"trainer.channels_last={channels_last}"]
        cfg = compose("train", *overrides)
        cfg.model = OmegaConf.create({"name": "stack", "layers": layers})
        run = tmp_path / f"channels_last_{channels_last}"
        prepared = train.prepare(cfg, run, [])
        train.train(prepared)

        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 2 and 0 <= metrics["best_val_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1
        state = checkpoint.load(run / "checkpoints" / "best.pt")
        rebuilt = build_from_config(OmegaConf.create(state["config"])).model
        rebuilt.load_state_dict(state["model"])
        rebuilt.eval()
        model = prepared.model.eval()
        x = torch.randn(5, *shape)
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(rebuilt(x), expected)
            torch.testing.assert_close(fuse_batchnorm(rebuilt)(x), expected, atol=1e-4, rtol=1e-3)
