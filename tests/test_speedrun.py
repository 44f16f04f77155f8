"""What makes cnn-train as fast as a hand-written loop changes no result: the optimizer's
lean step, the IDX reader, the speedrun recipe as a config."""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings

import pytest
import torch

from cnn_cli import data, idx, optim, runtime
from cnn_cli.builder import build_from_config
from cnn_cli.evaluate import evaluate
from helpers import compose, write_idx



@pytest.mark.parametrize("name, extra", [("SGD", {"momentum", "nesterov", "weight_decay"}),
                                         ("AdamW", {"betas", "weight_decay"}), ("RMSprop", {"alpha"})])
def test_the_lean_step_updates_exactly_as_torch_optim_does(name: str, extra: set) -> None:
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    built = optim.build_optimizer(compose("train", f"optimizer={name.lower()}").optimizer, ours.parameters(),
                                  torch.device("cpu"))
    extra = {key: built.defaults[key] for key in extra}  # the config's (optimizer=sgd: Nesterov 0.9, ...)
    kernels = {key: built.defaults[key] for key in ("foreach", "fused") if key in built.defaults}
    plain = getattr(torch.optim, name)(theirs.parameters(), lr=built.defaults["lr"], **kernels, **extra)
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=4) for o in (built, plain)]
    for step in range(4):
        x = torch.randn(8, 5)
        for model, optimizer, schedule in zip((ours, theirs), (built, plain), schedules):
            optimizer.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            optimizer.step()
            with warnings.catch_warnings():  # the schedule sees the step: no "lr_scheduler.step() before ..."
                warnings.simplefilter("error")
                schedule.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, settings, kernels", [
    ("SGD", {}, {"fused": True, "foreach": None}),  # one call updates every parameter
    ("Adam", {}, {"fused": True, "foreach": None}),
    ("AdamW", {}, {"fused": True, "foreach": None}),
    ("RMSprop", {}, {"foreach": True}),  # no fused kernel: foreach, on the CPU too
    ("Adagrad", {}, {"fused": None, "foreach": True}),  # its fused kernel is CPU-only: a config must run anywhere
    ("SGD", {"foreach": False}, {"fused": None, "foreach": False}),  # either key set: PyTorch's own rule
    ("SGD", {"fused": False}, {"fused": False, "foreach": None}),
    ("SGD", {"differentiable": True}, {"fused": None, "foreach": True}),  # fused cannot differentiate
])
def test_the_optimizer_gets_the_fastest_kernels_a_config_leaves_open(name: str, settings: dict,
                                                                     kernels: dict) -> None:
    cfg = compose("train", f"optimizer={name.lower()}", *(f"optimizer.{k}={v}" for k, v in settings.items()))
    optimizer = optim.build_optimizer(cfg.optimizer, torch.nn.Linear(3, 2).parameters(), torch.device("cpu"))
    assert {key: optimizer.defaults[key] for key in kernels} == kernels


def test_a_resumed_optimizer_keeps_this_runs_kernels() -> None:
    """A checkpoint's optimizer state from foreach kernels (an older run, another device)
    resumes on this run's fused ones, with its momentum."""
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    model(torch.ones(4, 3)).sum().backward()
    saved.step()
    cfg = compose("train", "optimizer=sgd")
    resumed = optim.build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
    optim.load_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]["fused"] is True and resumed.param_groups[0]["foreach"] is None
    assert resumed.param_groups[0]["lr"] == 0.1
    assert torch.equal(resumed.state[model.weight]["momentum_buffer"], saved.state[model.weight]["momentum_buffer"])


def test_a_resumed_fused_adam_finds_its_step_counters_beside_the_weights() -> None:
    """Fused Adam wants each step counter on its parameter's device (a GPU), foreach Adam
    keeps them on the host; PyTorch places them by the loaded groups' kernels, so those must
    be this run's. Parameters on the meta device stand in for a GPU's here."""
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.AdamW(model.parameters(), foreach=True)
    model(torch.ones(4, 3)).sum().backward()
    saved.step()
    assert saved.state[model.weight]["step"].device.type == "cpu"
    on_meta = torch.nn.Linear(3, 2, device="meta")
    resumed = optim.build_optimizer(compose("train", "optimizer=adamw").optimizer, on_meta.parameters(),
                                    torch.device("cuda"))  # the kernels a GPU run chooses
    optim.load_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    assert resumed.state[on_meta.weight]["step"].device.type == "meta"


def test_the_idx_reader_reads_what_torchvision_reads(tmp_path) -> None:
    from torchvision.datasets import MNIST

    folder = write_idx(tmp_path / "MNIST" / "raw", n_train=30, n_test=20)
    train_x, train_y, test_x, test_y = idx.read_splits(folder)
    for train, images, labels in ((True, train_x, train_y), (False, test_x, test_y)):
        theirs = MNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(images, theirs.data.unsqueeze(1)) and torch.equal(labels, theirs.targets)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64


@pytest.mark.parametrize("damage", ["missing", "truncated", "labels_for_images", "fewer_labels", "not_bytes"])
def test_an_odd_idx_file_is_left_to_torchvision(damage: str, tmp_path) -> None:
    """None, so that torchvision's reader names the problem (tests/test_bad_input.py)."""
    folder = write_idx(tmp_path, n_train=30, n_test=20)
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if damage == "missing":
        images.unlink()
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-5])
    elif damage == "labels_for_images":
        images.write_bytes(labels.read_bytes())
    elif damage == "fewer_labels":
        labels.write_bytes(struct.pack(">II", 0x801, 29) + bytes(29))
    else:  # int32 values (type code 0x0C)
        images.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 2) + bytes(8))
    assert idx.read_splits(folder) is None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_normalize_is_the_formula_and_leaves_the_split_as_it_was(dtype: torch.dtype) -> None:
    """uint8 pixels: (x / 255 - mean) / std; float readings: (x - mean) / std. The split's
    own tensor is never changed in place (a float batch of a whole split is the split)."""
    samples = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8).to(dtype)
    kept = samples.clone()
    mean, std = [0.1, 0.5, 2.0], [0.3, 0.2, 4.0]
    scaled = samples.double() / 255 if dtype == torch.uint8 else samples.double()
    expected = (scaled - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    out = data.normalize(samples, mean, std)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-5)
    assert torch.equal(samples, kept)


def test_the_speedrun_experiment_is_the_recipe() -> None:
    cfg = compose("train", "experiment=mnist_speedrun")
    model = build_from_config(cfg).model
    assert sum(p.numel() for p in model.parameters()) == 25_154
    assert [type(m).__name__ for m in model][:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert (cfg.dataset.val_size, cfg.optimizer.name, cfg.optimizer.lr, cfg.scheduler.name) == (0, "SGD", 0.2,
                                                                                                "OneCycleLR")
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.label_smoothing) == (64, 1, 0.1)
    assert not (cfg.trainer.log_graph or cfg.trainer.log_images or cfg.trainer.checkpoints)


def test_a_run_without_graph_images_or_checkpoints_still_tests_its_best_weights(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnn_cli import train

    cfg = compose("train", "dataset=mnist_sample", "trainer.epochs=2", "trainer.limit_train_batches=3",
                  "trainer.limit_val_batches=1", "trainer.progress=false", "trainer.device=cpu",
                  "trainer.log_graph=false", "trainer.log_images=false", "trainer.checkpoints=false")
    run = train.prepare(cfg, tmp_path / "run", [])
    train.train(run)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not (tmp_path / "run" / "checkpoints").exists()
    best = build_from_config(cfg).model
    best.load_state_dict(run.best_weights)
    test = evaluate(best, run.data, run.data.test, 256, None, run.amp, run.memory_format, tta=None)
    assert metrics["test_acc"] == test.accuracy and metrics["best_epoch"] in (1, 2)
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    tags = events.Tags()
    assert "loss/train" in tags["scalars"] and not tags["images"] and not tags["graph"]


def test_a_kernel_with_one_input_channel_gets_channels_last_strides() -> None:
    """Its NCHW strides also pass as channels-last, but PyTorch reads them as NCHW and runs the
    conv so, 1.6x slower on MNIST: the weights must be laid out as channels-last proper."""
    model = runtime.to_memory_format(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 4, 3)),
                                     torch.channels_last)
    for conv in model:
        expected = torch.empty_like(conv.weight, memory_format=torch.channels_last).stride()
        assert conv.weight.stride() == expected
    assert model[0].weight.stride() == (9, 1, 3, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's malloc's")
def test_a_training_step_reuses_the_memory_the_last_one_freed(tmp_path, monkeypatch) -> None:
    """Without runtime.reuse_freed_memory, glibc maps each step's activations afresh and the
    step page-faults on every page of them (about 700 faults a step here)."""
    import resource

    from cnn_cli import train

    for key in [key for key in os.environ if key.startswith(("MALLOC_", "GLIBC_TUNABLES"))]:
        monkeypatch.delenv(key)  # the user's own malloc settings are left alone
    cfg = compose("train", "experiment=mnist_speedrun", "dataset=mnist_sample", "trainer.limit_train_batches=40",
                   "trainer.progress=false", "trainer.device=cpu")
    run = train.prepare(cfg, tmp_path / "run", [])
    faults = []

    def count() -> None:  # after steps 10 and 40: the first ones warm up
        if run.progress.step in (10, 40):
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    train.train_one_epoch(run, train._NoWriter(), train.StopRequest(), count)
    assert (faults[1] - faults[0]) / 30 < 50


def test_the_lean_fused_step_takes_the_gradient_scalers_scale() -> None:
    """precision=16 (CUDA) scales the loss; the fused kernel unscales inside and skips a step
    whose gradients overflowed, through GradScaler's protocol, which the lean step keeps."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    built = optim.build_optimizer(compose("train", "optimizer=adamw").optimizer, ours.parameters(),
                                  torch.device("cpu"), scaled=True)
    plain = torch.optim.AdamW(theirs.parameters(), lr=built.defaults["lr"], weight_decay=built.defaults["weight_decay"],
                              fused=True)  # the unscaled step, for comparison
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(4, 3)
    scaler.scale(ours(x).square().sum()).backward()
    scaler.step(built)
    scaler.update()
    theirs(x).square().sum().backward()
    plain.step()
    assert built.defaults["fused"] and torch.allclose(ours.weight, theirs.weight, atol=1e-6)
    before = ours.weight.detach().clone()
    scaler.scale(ours(x * float("inf")).square().sum()).backward()  # overflowed gradients: no step
    scaler.step(built)
    scaler.update()
    assert torch.equal(ours.weight, before) and scaler.get_scale() == 512.0


def test_sgd_under_a_gradient_scaler_survives_an_overflowed_first_step() -> None:
    """A scaler's first scale (2**16) often overflows the first step. PyTorch's fused SGD then
    keeps momentum buffers it never filled, so under a scaler SGD gets foreach kernels,
    whose buffers and weights stay exactly as they were."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    built = optim.build_optimizer(compose("train", "optimizer=sgd").optimizer, model.parameters(),
                                  torch.device("cpu"), scaled=True)
    assert built.defaults["foreach"] is True and not built.defaults["fused"]
    before = model.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu")
    for step in range(2):
        junk = [torch.full((64, 64), 1e30) for _ in range(4)]  # freed memory full of large numbers, to be reused
        del junk
        optim.clear_grads(built)
        x = torch.randn(8, 64) * (float("inf") if step == 0 else 1)
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(built)
        scaler.update()
        if step == 0:
            assert torch.equal(model.weight, before)
    assert built.state[model.weight]["momentum_buffer"].abs().max() < 1
    assert (model.weight - before).abs().max() < 1
