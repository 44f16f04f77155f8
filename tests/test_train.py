"""cnn-train and cnn-eval end to end, on the bundled MNIST sample with tiny settings."""

from __future__ import annotations

import copy
import json
import math
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from cnn_cli import checkpoint, optim
from cnn_cli.builder import build_model
from helpers import BIN, cnn, compose, one_error_line, tiny, train_here

# steps worth counting: 4 of 32 images an epoch, the loss and learning rate logged at the
# first step and every second
COUNTED = ["trainer.limit_train_batches=4", "trainer.batch_size=32", "trainer.log_every_n_steps=2"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny 2-epoch lenet5_bn run that several tests read."""
    tmp = tmp_path_factory.mktemp("train")
    proc = cnn("cnn-train", *tiny(*COUNTED, "trainer.progress=auto", "model=lenet5_bn", "trainer.epochs=2",
                                  "trainer.log_histograms=true"), f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    (tmp / "run" / "output.txt").write_text(proc.stdout + proc.stderr)
    return tmp / "run"


@pytest.mark.e2e
def test_progress_auto_draws_no_bars_into_a_captured_log_but_one_line_per_epoch(run_dir: Path) -> None:
    output = (run_dir / "output.txt").read_text()
    assert "\r" not in output and "batch/s" not in output and "it/s" not in output
    assert re.findall(r"epoch (\d)/2  train loss", output) == ["1", "2"]


@pytest.mark.e2e
def test_run_folder_holds_checkpoints_metrics_log_and_config(run_dir: Path) -> None:
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "train.log", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist_sample"
    assert metrics["epochs"] == 2 and metrics["steps"] == 8
    assert 0 <= metrics["test_acc"] <= 1 and metrics["torch"] == torch.__version__
    assert "1,256,650" in (run_dir / "train.log").read_text()  # the layer table is logged first
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["config"]["model"]["name"] == "lenet5_bn" and state["finished"]


@pytest.mark.e2e
def test_tensorboard_has_scalars_images_hparams_and_graph(run_dir: Path) -> None:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/train", "accuracy/train", "loss/val", "accuracy/val", "lr", "throughput/img_per_s",
                "time/epoch_seconds", "loss/train_step", "result/test_acc", "result/best_val_acc"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("accuracy/val")] == [4, 8]  # one per epoch, x-axis is the step
    assert {"pictures/filters_first_conv", "pictures/misclassified"} <= set(tags["images"])
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("running_stats/") and t.endswith("running_var") for t in tags["histograms"])
    hparams = set()  # hparams in the run's own folder, no sub-run
    for content in events.PluginTagToContent("hparams").values():
        hparams |= set(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)
    assert {"model", "optimizer", "optimizer.lr", "scheduler", "trainer.batch_size", "trainer.channels_last"} <= hparams
    assert not hparams & {"optimizer.foreach", "trainer.progress", "trainer.log_every_n_steps"}  # not what it learns
    assert [p for p in (run_dir / "tb").iterdir() if p.is_dir()] == []
    assert tags["graph"]


@pytest.mark.e2e
def test_feature_maps_of_every_conv_layer_for_two_test_images(run_dir: Path) -> None:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {t for t in events.Tags()["images"] if t.startswith("pictures/features_")} == \
        {"pictures/features_conv1", "pictures/features_conv2"}
    conv1 = events.Images("pictures/features_conv1")[-1]
    # 20 maps of 28 x 28 in a 5 x 4 grid (2 pixels between tiles), 4 pixels after it, two images side by side
    assert (conv1.width, conv1.height) == (2 * (5 * 30 + 2 + 4), 4 * 30 + 2)
    conv2 = events.Images("pictures/features_conv2")[-1]  # 50 maps of 14 x 14, shown at 28 x 28: an 8 x 7 grid
    assert (conv2.width, conv2.height) == (2 * (8 * 30 + 2 + 4), 7 * 30 + 2)


@pytest.mark.e2e
def test_loss_and_learning_rate_are_curves_per_step_and_charts_pair_train_with_val(run_dir: Path) -> None:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    # trainer.log_every_n_steps=2 over 8 steps: the first step and every second
    assert [e.step for e in events.Scalars("loss/train_step")] == [1, 2, 4, 6, 8]
    lr = events.Scalars("lr")
    assert [e.step for e in lr] == [1, 2, 4, 6, 8]
    # the cosine schedule over the 8 steps from sgd's 0.05, each step's own rate
    assert [e.value for e in lr] == pytest.approx([0.05 * (1 + math.cos(math.pi * (s - 1) / 8)) / 2
                                                   for s in (1, 2, 4, 6, 8)], rel=1e-5)
    config = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    charts = {chart.title: list(chart.multiline.tag) for category in layout_pb2.Layout.FromString(config).category
              for chart in category.chart}
    assert charts["loss (train, val)"] == ["loss/train", "loss/val"]
    assert charts["accuracy (train, val)"] == ["accuracy/train", "accuracy/val"]
    assert charts["learning rate per step"] == ["lr"]


@pytest.mark.e2e
def test_cnn_eval_reproduces_the_test_accuracy_and_folds_batchnorm(run_dir: Path, tmp_path: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cnn("cnn-eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "fuse_bn=true", cwd=tmp_path)
    report = json.loads((run_dir / "checkpoints" / "best.eval-test.json").read_text())
    assert report["accuracy"] == metrics["test_acc"]
    assert sum(map(sum, report["confusion_matrix"])) == 1000
    assert report["fuse_bn"]["max_abs_logit_difference"] < 1e-4
    assert report["fuse_bn"]["same_predictions"]


@pytest.mark.e2e
def test_init_from_starts_from_trained_weights(run_dir: Path, tmp_path: Path) -> None:
    source = run_dir / "checkpoints" / "best.pt"
    cnn("cnn-train", *tiny("model=lenet5_bn", "optimizer.lr=1e-9", "optimizer.weight_decay=0", f"init_from={source}"),
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    start, end = weights(source), weights(tmp_path / "run" / "checkpoints" / "last.pt")
    # lr=1e-9: the parameters stay the trained ones (batchnorm running statistics still move)
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_evaluation_keeps_the_batchnorm_statistics_and_the_mode_it_found() -> None:
    from cnn_cli import data
    from cnn_cli.evaluate import evaluate

    layers = [{"conv2d": {"out_channels": 4, "kernel_size": 3}}, "batchnorm2d", "relu", "flatten",
              {"linear": {"out_features": 10}}]
    model = build_model(layers, (1, 28, 28)).model
    sample = data.load(compose("train", "dataset=mnist_sample").dataset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, sample, sample.val, 100, limit=2, tta=None)
    assert model.training  # as it was found, for the next training step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics included


@pytest.mark.e2e
def test_stopped_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path: Path) -> None:
    args = tiny(*COUNTED, "model=lenet5_bn", "trainer.epochs=3", "trainer.deterministic=true",
                "trainer.limit_train_batches=12")
    cnn("cnn-train", *args, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)

    cut = tmp_path / "cut"
    proc = subprocess.Popen([str(BIN / "cnn-train"), *args, f"hydra.run.dir={cut}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:  # interrupt during the second epoch
        output.append(line)
        if "epoch 1/3 " in line:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(output)
    assert "cnn-train resume=" in "".join(output)
    stopped = checkpoint.load(cut / "checkpoints" / "last.pt")  # loadable, mid-run
    assert not stopped["finished"] and stopped["progress"]["epoch"] == 1

    cnn("cnn-train", f"resume={cut}", cwd=tmp_path)
    full, resumed = weights(tmp_path / "full/checkpoints/last.pt"), weights(cut / "checkpoints/last.pt")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", cut))
    assert (a["test_acc"], a["best_val_acc"], a["steps"]) == (b["test_acc"], b["best_val_acc"], b["steps"])
    timing = ("img_per_s", "epoch_seconds", "val_seconds")
    assert ([{k: v for k, v in row.items() if k not in timing} for row in a["history"]]
            == [{k: v for k, v in row.items() if k not in timing} for row in b["history"]])


@pytest.mark.e2e
def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    proc = cnn("cnn-train", *tiny("optimizer.lr=1e12"), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
               check=False)
    line = one_error_line(proc, after_log=True)
    assert "epoch 1, step" in line and "lower learning rate" in line
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # nothing half-trained saved


@pytest.mark.parametrize("scheduler", ["none", "step", "multistep", "cosine", "onecycle"])
def test_every_scheduler_trains(scheduler: str, tmp_path: Path) -> None:
    from cnn_cli.optim import build_scheduler

    cfg = compose("train", f"scheduler={scheduler}", "scheduler.warmup_epochs=1")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    sched, per_step = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=10, epochs=4)
    assert per_step == (scheduler in ("cosine", "onecycle"))
    assert optimizer.param_groups[0]["lr"] < cfg.optimizer.lr / 10  # warming up
    lrs = []
    for _ in range(40 if per_step else 4):
        optimizer.step()
        sched.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(cfg.optimizer.lr, rel=0.01)  # warm-up reaches the configured rate
    if scheduler in ("cosine", "onecycle"):
        assert lrs[-1] < cfg.optimizer.lr / 100  # and decays over the run's length, filled in by the trainer
    path = tmp_path / "scheduler.pt"  # its state must load as plain data, like the whole checkpoint
    torch.save(sched.state_dict(), path)
    assert torch.load(path, weights_only=True).keys() == sched.state_dict().keys()


@pytest.mark.parametrize(("steps", "pct_start"), [(5, 0.2), (10, 0.1)])
def test_a_one_cycle_warm_up_of_one_step_is_a_clear_error(steps: int, pct_start: float) -> None:
    from omegaconf import OmegaConf

    from cnn_cli.errors import UserError
    from cnn_cli.optim import build_scheduler

    cfg = OmegaConf.create({"name": "OneCycleLR", "max_lr": 0.1, "pct_start": pct_start, "interval": "step"})
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(UserError, match=rf"pct_start={pct_start} of {steps} steps .* one step.* train more steps"):
        build_scheduler(cfg, optimizer, steps_per_epoch=steps, epochs=1)
    for steps in (3, 20):  # a warm-up of more or less than one step: builds, as torch allows
        build_scheduler(cfg, optimizer, steps_per_epoch=steps, epochs=1)


@pytest.mark.slow  # a real training run in process
def test_plateau_lowers_the_rate_after_each_epoch_without_improvement(tmp_path: Path) -> None:
    # threshold 10 (relative, mode min) counts no epoch as an improvement, so with patience 0
    # ReduceLROnPlateau multiplies the rate by factor after every epoch's validation
    train_here(tmp_path / "run", *tiny("scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5",
                                       "scheduler.threshold=10", "trainer.epochs=3", "trainer.device=cpu"))
    rates = [row["lr"] for row in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]]
    assert rates == pytest.approx([0.05, 0.025, 0.0125])
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")  # what a resume continues from
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.00625)
    assert state["scheduler"]["num_bad_epochs"] == 0 and state["scheduler"]["factor"] == 0.5


def test_each_epoch_reports_the_rate_its_last_step_used_never_one_past_a_schedules_end(tmp_path: Path) -> None:
    # one-cycle's linear decay, stepped once past its last step (the run's last scheduler.step()), goes below zero:
    # 2 epochs of 4 steps to max_lr 0.05 end at 0.05 / 25 / 1e4 = 2e-7, and one step past at -0.0083
    run = train_here(tmp_path / "run", *tiny("scheduler=onecycle", "scheduler.anneal_strategy=linear",
                                             "trainer.limit_train_batches=4", "trainer.epochs=2",
                                             "trainer.log_every_n_steps=1", "trainer.device=cpu",
                                             "trainer.log_graph=false", "trainer.log_images=false"))
    rates = [row["lr"] for row in json.loads((run / "metrics.json").read_text())["history"]]
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    per_step = {e.step: e.value for e in events.Scalars("lr")}
    assert sorted(per_step) == list(range(1, 9)) and min(per_step.values()) > 0
    assert rates == pytest.approx([per_step[4], per_step[8]], rel=1e-6)  # float32 in TensorBoard
    assert rates[-1] == pytest.approx(0.05 / 25 / 1e4)


def test_an_experiment_states_only_its_changes_and_the_command_line_still_wins() -> None:
    plain = compose("train")
    recipe = compose("train", "experiment=lenet5_bn_onecycle")
    changed = compose("train", "experiment=lenet5_bn_onecycle", "scheduler=cosine", "optimizer.lr=0.05")
    assert (recipe.model.name, recipe.scheduler.name, recipe.optimizer.lr) == ("lenet5_bn", "OneCycleLR", 0.1)
    assert recipe.dataset == plain.dataset and recipe.trainer == plain.trainer  # the rest is train.yaml's
    assert (changed.model.name, changed.scheduler.name, changed.optimizer.lr) == \
        ("lenet5_bn", "CosineAnnealingLR", 0.05)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_torch_optim_optimizer_is_a_config_choice_that_takes_a_step(name: str) -> None:
    cfg = compose("train", f"optimizer={name.lower()}")
    optim.check(cfg, epochs=3)
    model = torch.nn.Linear(3, 2)
    optimizer = optim.build_optimizer(cfg.optimizer, model.parameters(), torch.device("cpu"))
    assert type(optimizer).__name__ == name
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


def test_a_scheduler_by_name_checks_its_own_required_keys() -> None:
    cfg = compose("train", "scheduler=exponentiallr", "scheduler.gamma=0.5")
    optim.check(cfg, epochs=3)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler, per_step = optim.build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=10, epochs=3)
    optimizer.step()
    scheduler.step()
    assert not per_step and optimizer.param_groups[0]["lr"] == 0.5


def test_configs_name_only_torch_optim_classes_with_their_own_arguments() -> None:
    from cnn_cli.errors import UserError

    cfg = compose("train")
    for group, name, message in (("optimizer", "os.system", "not a torch.optim class"),
                                 ("optimizer", "StepLR", "not a torch.optim class"),
                                 ("optimizer", "LBFGS", "not a torch.optim class this trainer can use"),
                                 ("scheduler", "SGD", "not a torch.optim.lr_scheduler class"),
                                 ("optimizer", "Adadelta", "optimizer.momentum: Adadelta takes no such argument")):
        changed = copy.deepcopy(cfg)
        changed[group].name = name
        with pytest.raises(UserError, match=message):  # before any data is read
            optim.check(changed, epochs=3)
    with pytest.raises(UserError, match="Invalid learning rate"):  # the constructor's own message, one line
        optim.build_optimizer(OmegaConf.create({"name": "SGD", "lr": -1.0}), torch.nn.Linear(2, 2).parameters(),
                              torch.device("cpu"))


def test_a_checkpoint_config_of_the_target_era_resumes_as_named_classes() -> None:
    old = {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
           "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 2}}
    stored = checkpoint.stored_config(old)
    assert OmegaConf.to_container(stored) == {"optimizer": {"name": "SGD", "lr": 0.1},
                                              "scheduler": {"name": "StepLR", "step_size": 2}}
    assert old["optimizer"]["_target_"] == "torch.optim.SGD"  # the checkpoint's own dict is left as it was


def test_a_batch_larger_than_the_training_set_takes_the_whole_set_and_says_so(tmp_path: Path, caplog) -> None:
    from cnn_cli import train

    cfg = compose("train", "dataset=mnist_sample", "trainer.batch_size=100000", "trainer.device=cpu")
    with caplog.at_level("WARNING", logger="cnn_cli"):
        run = train.prepare(cfg, tmp_path / "run", [])
    assert "trainer.batch_size=100000 is larger than the 3500 training samples of mnist_sample: using batches of " \
           "3500" in caplog.text
    assert run.steps_per_epoch == 1 and run.record["trainer"]["batch_size"] == 3500
    assert not (tmp_path / "run").exists()  # preparing writes nothing


def test_resume_accepts_only_overrides_that_keep_the_run_exact() -> None:
    from cnn_cli.errors import UserError
    from cnn_cli.checkpoint import resumed_config

    stored = {"config": {"seed": 0, "trainer": {"device": "auto", "batch_size": 32}}}
    cfg = resumed_config(stored, ["resume=outputs/x", "trainer.device=cpu"])
    assert cfg.trainer.device == "cpu" and cfg.trainer.batch_size == 32
    # keys newer than the checkpoint: what a run without them did (a graph, pictures and checkpoints)
    assert (cfg.trainer.log_graph, cfg.trainer.log_images, cfg.trainer.checkpoints, cfg.trainer.freeze,
            cfg.trainer.fit_to_data, cfg.trainer.tta) == (True, True, True, None, False, None)
    for changed in ("trainer.batch_size=64", "seed=1", "model=lenet5_bn", "+trainer.foo=1"):
        with pytest.raises(UserError, match="continues exactly as it started"):
            resumed_config(stored, ["resume=outputs/x", changed])


def test_a_residual_body_may_not_start_in_place() -> None:
    from cnn_cli.errors import UserError

    body = [{"relu": {"inplace": True}}, {"conv2d": {"out_channels": 2, "kernel_size": 1}}]
    layers = [{"residual": {"layers": body}}]
    with pytest.raises(UserError, match=r"model.layers\[0\].residual.layers\[0\]: an in-place relu"):
        build_model(layers, (2, 3, 3))
    layers[0]["residual"]["layers"].reverse()  # in place after the first layer is fine
    x = torch.randn(4, 2, 3, 3)
    model = build_model(layers, (2, 3, 3)).model
    with torch.no_grad():
        assert torch.allclose(model(x.clone()), torch.relu(model.res1.body.conv1(x)) + x)


def test_the_projection_shortcut_takes_the_body_stride() -> None:
    from cnn_cli.errors import UserError

    # kernel 4, stride 3 on 10: windows start at 0, 3, 6; a 1x1 conv with stride 3 would give
    # 4 positions and ceil(10 / 3) = 4 would sample others: refused rather than misaligned
    layers = [{"residual": {"layers": [{"conv2d": {"out_channels": 4, "kernel_size": 4, "stride": 3}}]}}]
    with pytest.raises(UserError, match="no 1x1 strided projection turns 2 x 10 x 10 into 4 x 3 x 3"):
        build_model(layers, (2, 10, 10))
    layers[0]["residual"]["layers"][0]["conv2d"]["padding"] = 2  # (10 + 4 - 4) // 3 + 1 = 4 windows
    built = build_model(layers, (2, 10, 10))
    assert built.output_shape == (4, 4, 4) and built.model.res1.shortcut[0].stride == (3, 3)

