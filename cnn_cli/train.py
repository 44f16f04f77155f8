"""The training loop: one readable path from config to metrics.json.

Everything random is a function of (seed, epoch) or saved in the checkpoint, so a run
stopped at any step and resumed ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from cnn_cli import (augment, checkpoint, data as data_mod, debugging, distributed, files, meter, optim, pretrained,
                     recipe, rundir, runtime, schema, stopping, tb, transfer, tta)
from cnn_cli.builder import build_from_config
from cnn_cli.ema import WeightAverage
from cnn_cli.errors import UserError, first_line
from cnn_cli.evaluate import evaluate
from cnn_cli.summary import format_table

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

NO_VALIDATION = "last epoch (dataset.val_size=0: no validation split)"


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps so far, the TensorBoard x-axis
    best_acc: float = -1.0
    best_epoch: int = -1
    # the epoch's running sums, so an epoch resumed mid-way reports the same numbers
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    lr: float = 0.0  # the rate the epoch's last optimizer step used, which its row reports
    threads: int = 0  # the thread count it trains with, which a deterministic resume keeps (runtime.set_threads)
    history: list[dict[str, float]] = field(default_factory=list)
    pretrained: list[str] = field(default_factory=list)  # parameters that came loaded: their own rate on resume


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save and exit; a second one
    stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> "StopRequest":
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: finishing this step, then saving (again to stop at once)", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass(kw_only=True)
class Run:
    """Everything a run needs and owns, checked and loaded before anything is written.
    Its state_dict() is the checkpoint, and load_state_dict() continues from one; it is built
    by name, its first fields in the checkpoint's order."""

    # what the checkpoint holds
    cfg: DictConfig
    record: dict[str, Any]  # the config as checkpoints and TensorBoard keep it (checkpoint.recorded_config)
    model: nn.Module
    ema: WeightAverage | None = None  # trainer.ema_decay: the averaged weights, which are validated and tested
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step: bool  # the scheduler steps every optimizer step, else every epoch
    scaler: torch.amp.GradScaler
    progress: Progress = field(default_factory=Progress)
    # where and how it runs
    run_dir: Path
    device: torch.device
    precision: str
    rank: distributed.Rank  # which of the torchrun processes this is (0 of 1 without torchrun)
    forward: nn.Module  # the model as the steps call it: under DistributedDataParallel and torch.compile
    data: data_mod.Data
    steps_per_epoch: int
    frozen: list[str] = field(default_factory=list)  # trainer.freeze's layers
    resumed: bool = False
    best_weights: dict[str, torch.Tensor] | None = None  # trainer.checkpoints=false: best.pt's weights, in memory

    def state_dict(self, finished: bool = False) -> dict[str, Any]:
        """The checkpoint: its keys are checkpoint.FORMAT's (plus versions and the average), all plain data."""
        average = {"ema": self.ema.model.state_dict()} if self.ema else {}
        return {"model": self.model.state_dict(), **average, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "progress": asdict(self.progress), "rng": checkpoint.rng_state(), "config": self.record,
                "finished": finished, "versions": checkpoint.versions()}

    def load_state_dict(self, state: dict[str, Any], key: str) -> None:
        checkpoint.load_weights(self.model, state, key, averaged=False)
        if self.ema:
            checkpoint.load_weights(self.ema.model, state, key)
        optim.load_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = _progress(state["progress"], key)
        if self.progress.best_epoch >= 1 and not (self.ckpt_dir / "best.pt").is_file():  # the end tests best.pt
            raise UserError(f"{key}: {self.ckpt_dir / 'best.pt'} is missing (the run saved it at epoch "
                            f"{self.progress.best_epoch}); put it back, or start a new run from the last weights with "
                            f"init_from={shlex.quote(str(self.ckpt_dir / 'last.pt'))}")
        checkpoint.set_rng_state(state["rng"])
        self.resumed = True

    def save(self, name: str, finished: bool = False) -> None:
        if not self.cfg.trainer.checkpoints:  # the best weights are still what the test set tests
            if name == "best.pt":
                self.best_weights = {key: value.clone() for key, value in self.evaluated.state_dict().items()}
        elif self.rank.main:  # the other processes hold the same state
            checkpoint.save(self.state_dict(finished), self.ckpt_dir / name)

    def best(self) -> nn.Module:
        """The model with best.pt's weights (the run's model keeps its last weights for last.pt;
        with no checkpoints there is no last.pt, and the model itself takes the best weights)."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            return self.model
        best = copy.deepcopy(self.model)
        checkpoint.load_weights(best, checkpoint.load(self.ckpt_dir / "best.pt"), "best.pt")  # the average's, if kept
        return best

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation, the test and best.pt judge: the average's, if kept."""
        return self.ema.model if self.ema else self.model

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def memory_format(self) -> torch.memory_format:
        return runtime.memory_format(self.cfg.trainer.channels_last, self.data.sample_rank)

    def amp(self):
        return runtime.autocast(self.device, self.precision)


def prepare(cfg: DictConfig, run_dir: Path, task_overrides: list[str]) -> Run:
    """Check every input (config ranges, devices, checkpoints, the model's shapes, the data)
    and load it all; raises UserError, having written nothing, if anything is wrong."""
    resume = cfg.resume
    if resume and Path(resume).expanduser().is_dir() and rundir.never_saved(Path(resume).expanduser()):
        raise UserError(f"resume={resume}: {rundir.never_saved_message(Path(resume).expanduser())}")
    resumed = checkpoint.load(resume, "resume") if resume else None
    if resumed is not None:
        if checkpoint.run_finished(resume, resumed):
            raise UserError(f"resume={resume}: that run already finished (see {run_dir / 'metrics.json'}); nothing "
                            "to do. To train on from its weights, start a new run with init_from=<its best.pt>")
        cfg = checkpoint.resumed_config(resumed, task_overrides)
    pretrained.default_normalisation(cfg)
    schema.check(cfg)
    opened = data_mod.resolve(cfg.dataset)  # the one look at the files before reading: imagefolder decodes here
    tta.check(cfg.trainer.tta, cfg.dataset.input_shape)  # the samples' rank: known once resolved
    hidden = checkpoint.environment_values(cfg, checkpoint.recorded_config(cfg))
    if hidden:  # the log (train.log, the console) says ${oc.env:KEY} where the config did
        for handler in logging.getLogger().handlers:
            handler.addFilter(checkpoint.HideEnvironment(hidden))
    trainer = cfg.trainer
    rank = distributed.this_process()
    if trainer.batch_size % rank.world:
        raise UserError(f"trainer.batch_size={trainer.batch_size} must split evenly over the {rank.world} processes "
                        f"(it is the global batch); use a multiple of {rank.world}")
    device = runtime.resolve_device(trainer.device)
    if device.type == "cuda" and rank.world > 1:
        device = torch.device("cuda", rank.local)  # one GPU per process
    precision = runtime.check_precision(trainer.precision, device)
    runtime.make_deterministic(trainer.deterministic)
    kept = resumed["progress"].get("threads") if resumed is not None and trainer.deterministic else None
    threads = runtime.set_threads(trainer.num_threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), kept)
    runtime.reuse_freed_memory()
    torch.manual_seed(cfg.seed)

    distributed.start(rank, device)
    if not rank.main:  # the others compute; rank 0 reports
        logging.getLogger("cnn_cli").setLevel(logging.WARNING)
    run_dir = Path(distributed.from_main(str(run_dir)))  # where rank 0 writes; the others read best.pt there

    model = _model(cfg, device, rank)
    log.info("threads: %s", threads)  # once the model fits: a layer that cannot is one line and nothing else
    loaded = resumed["progress"].get("pretrained", []) if resumed is not None else _start_weights(cfg, model)
    frozen = transfer.frozen_layers(model, trainer.freeze)
    transfer.freeze(model, frozen)
    data = _data(cfg, device, rank, opened)
    steps_per_epoch = data_mod.num_train_batches(len(data.train), trainer.batch_size)
    for limit in (trainer.limit_train_batches, trainer.overfit_batches):
        if limit:
            steps_per_epoch = min(steps_per_epoch, limit)
    groups = transfer.param_groups(model, loaded, cfg.optimizer.lr, trainer.pretrained_lr_scale)
    optimizer = optim.build_optimizer(cfg.optimizer, groups, device, scaled=precision == "16")
    optimizer_steps = -(-steps_per_epoch // trainer.accumulate_grad_batches)  # per epoch
    scheduler, per_step = optim.build_scheduler(cfg.scheduler, optimizer, optimizer_steps, trainer.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    forward = model
    if rank.world > 1:  # gradients are averaged over the processes in backward()
        forward = nn.parallel.DistributedDataParallel(model,
                                                      device_ids=[device.index] if device.type == "cuda" else None)
    if trainer.compile:
        forward = torch.compile(forward)
    run = Run(cfg=cfg, record=checkpoint.recorded_config(cfg), model=model,
              ema=WeightAverage(model, trainer.ema_decay) if trainer.ema_decay else None, optimizer=optimizer,
              scheduler=scheduler, per_step=per_step, scaler=scaler, progress=Progress(pretrained=loaded),
              run_dir=run_dir, device=device, precision=precision, rank=rank, forward=forward, data=data,
              steps_per_epoch=steps_per_epoch, frozen=frozen)
    if resumed is not None:
        run.load_state_dict(resumed, f"resume={resume}")
        log.info("resumed %s at epoch %d, batch %d (step %d)", run_dir, run.progress.epoch + 1, run.progress.batch,
                 run.progress.step)
    run.progress.threads = torch.get_num_threads()
    return run


def _start_weights(cfg: DictConfig, model: nn.Module) -> list[str]:
    """model.pretrained's weights, then init_from's, each where name and shape match (transfer);
    returns the names of the parameters that loaded."""
    loaded: set[str] = set()
    if cfg.model.get("pretrained"):
        weights = pretrained.load(model, cfg.model, cfg.dataset.num_classes)
        loaded |= set(transfer.load_matching(model, weights, f"model.pretrained={cfg.model.pretrained}"))
    if cfg.init_from:
        init = checkpoint.load(cfg.init_from, "init_from")
        new_classes = init["config"].get("dataset", {}).get("classes") != list(cfg.dataset.classes)
        loaded |= set(transfer.load_matching(model, init["model"], f"init_from={cfg.init_from}", new_classes))
    return sorted(loaded)


def _model(cfg: DictConfig, device: torch.device, rank: distributed.Rank) -> nn.Module:
    """The network the config declares, its table logged, on the device in the memory format it trains in."""
    built = build_from_config(cfg)
    log.info("%s (%s)\n%s", cfg.model.name, cfg.dataset.name, format_table(built))
    for warning in built.warnings:
        log.warning(warning)
    model = built.model.to(device)
    if cfg.trainer.sync_bn and rank.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    rank_of_samples = len(cfg.dataset.input_shape)
    return runtime.to_memory_format(model, runtime.memory_format(cfg.trainer.channels_last, rank_of_samples))


def _data(cfg: DictConfig, device: torch.device, rank: distributed.Rank, opened: data_mod.Opened) -> data_mod.Data:
    """The dataset on the device, described in the log; a batch larger than the training set
    becomes the whole set (in cfg.trainer.batch_size, so the checkpoint records it)."""
    trainer = cfg.trainer
    data = data_mod.load(cfg.dataset, device, opened)
    log.info("data: %s, %d train / %d val / %d test samples on %s", data.name, len(data.train), len(data.val),
             len(data.test), device)
    if not len(data.test):
        raise UserError(f"{data.name} has no test samples, and the run ends with a report on them; "
                        f"{opened.source.empty_test_fix(cfg.dataset)}")
    if trainer.fit_to_data:
        trainer.batch_size, trainer.epochs, said = recipe.fit_to_data(len(data.train))
        log.info("fit to the data: %s", said)
        optim.check(cfg, trainer.epochs)  # a warm-up must still be shorter than the run
    if not len(data.val):
        log.info("no validation split (dataset.val_size=0): training on the whole training set; best.pt is the "
                 "last epoch")
    if trainer.batch_size > len(data.train):  # e.g. a small folder of one's own images: each step takes them all
        whole = len(data.train) - len(data.train) % rank.world
        if not whole:
            raise UserError(f"{data.name} has {len(data.train)} training samples, fewer than the {rank.world} "
                            "processes")
        log.warning("trainer.batch_size=%d is larger than the %d training samples of %s: using batches of %d (the "
                    "checkpoint records that)", trainer.batch_size, len(data.train), data.name, whole)
        trainer.batch_size = whole
    return data


def train(run: Run) -> float:
    """Train as the run says, in its folder; returns the best validation accuracy (for
    sweepers; NaN with no validation split, as nothing may be chosen on the test set)."""
    trainer, progress, rank = run.cfg.trainer, run.progress, run.rank
    # on resume, TensorBoard hides whatever an interrupted process logged after this step
    writer = tb.open_writer(run.run_dir / "tb", purge_step=progress.step + 1 if run.resumed else None) \
        if rank.main else _NoWriter()
    try:
        if not run.resumed:
            if trainer.log_graph:
                _log_graph(writer, run.model, run.data)
            writer.add_custom_scalars(tb.CHARTS)
            if rank.main:
                tb.start_session(writer, {**tb.flat_hparams(run.record), "data": run.data.name})
        accumulate = trainer.accumulate_grad_batches
        log.info("training: %d epochs of %d steps, batch %d%s%s, %s precision", trainer.epochs,
                 -(-run.steps_per_epoch // accumulate), trainer.batch_size,
                 f" ({rank.world} processes x {trainer.batch_size // rank.world})" * (rank.world > 1),
                 f", {accumulate} batches a step" * (accumulate > 1), run.precision)
        left_out = len(run.data.train) % trainer.batch_size
        if left_out and not trainer.limit_train_batches:
            log.info("each epoch leaves %d of the %d training samples out (a partial last batch is dropped; the next "
                     "epoch's shuffle takes others)", left_out, len(run.data.train))
        profile = debugging.profiled(trainer.profile_steps if rank.main else None, run.run_dir / "profile", run.device)
        with StopRequest() as stop, profile as profile_step:
            while _going_on(run):
                stopped = train_one_epoch(run, writer, stop, profile_step)
                if progress.batch >= run.steps_per_epoch:  # the epoch is complete
                    end_epoch(run, writer)
                if stopped:
                    run.save("last.pt")
                    if rank.main and not trainer.checkpoints:
                        log.warning("stopped at epoch %d, step %d; nothing saved (trainer.checkpoints=false)",
                                    progress.epoch + 1, progress.step)
                    elif rank.main:
                        log.warning("stopped at epoch %d, step %d; saved %s. Continue with:\n  cnn-train resume=%s",
                                    progress.epoch + 1, progress.step, run.ckpt_dir / "last.pt",
                                    shlex.quote(str(run.run_dir)))
                    raise SystemExit(128 + (stop.signum or signal.SIGTERM))
            return finish(run, writer)
    except OSError as err:
        raise _events_not_written(err, run.run_dir) from None
    finally:
        error = sys.exc_info()[1]
        failing = error is not None
        try:
            if rank.main and failing and not isinstance(error, (SystemExit, KeyboardInterrupt)):  # stopped: resumable
                tb.end_session(writer, {}, progress.step, failed=True)
            writer.close()
        except OSError as err:  # a run already failing reports that first error
            if not failing:
                raise _events_not_written(err, run.run_dir) from None
        distributed.stop()


def _going_on(run: Run) -> bool:
    """Epochs remain, and early stopping (if on) has not said stop."""
    trainer, progress = run.cfg.trainer, run.progress
    return (progress.epoch < trainer.epochs and not debugging.overfitted(progress.history, trainer)
            and not stopping.reason_to_stop(progress.history, trainer.early_stopping, trainer.epochs))


def show_progress(setting: bool | str) -> bool:
    """trainer.progress: true or false, or auto: bars only on a terminal, so that a log captured
    to a file gets the one line per epoch instead of thousands of bar redraws."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def train_one_epoch(run: Run, writer: SummaryWriter, stop: StopRequest,
                    after_step: Callable[[], None] = lambda: None) -> bool:
    """The rest of the epoch in progress, from its next batch; returns whether a stop was asked for."""
    cfg, progress, rank, trainer = run.cfg, run.progress, run.rank, run.cfg.trainer
    crop = cfg.dataset.augment.crop_padding
    epoch = 0 if trainer.overfit_batches else progress.epoch  # debug=overfit: the same batches every epoch
    plan = data_mod.epoch_plan(len(run.data.train), cfg.seed, epoch, crop, cfg.dataset.augment.flip,
                               run.data.sample_rank - 1)
    batches = data_mod.train_batches(run.data, trainer.batch_size, plan, crop, progress.batch, run.steps_per_epoch,
                                     rank.index, rank.world)
    drawing = rank.main and show_progress(trainer.progress)
    transfer.train_mode(run.model, run.frozen)  # again after each validation
    bar = tqdm(batches, total=run.steps_per_epoch, initial=progress.batch,
               desc=f"epoch {progress.epoch + 1}/{trainer.epochs}", disable=not drawing, leave=False, unit="batch",
               dynamic_ncols=True)
    # looked up once, not at every step: each config lookup costs as much as a small tensor op
    memory_format, accumulate, every = run.memory_format, trainer.accumulate_grad_batches, trainer.log_every_n_steps
    photo, smoothing, clip = augment.settings(cfg.dataset.augment), trainer.label_smoothing, trainer.grad_clip_norm
    classes, seed = cfg.dataset.num_classes, cfg.seed * 1_000_003
    numbers = meter.Meter()  # read at the steps logged, at the epoch's end and at a stop: no wait on the device
    started = time.perf_counter()
    try:
        for images, labels in bar:
            images, targets = augment.apply(images, labels, photo, run.data.mean, run.data.std, classes,
                                            seed + progress.step)
            images = images.contiguous(memory_format=memory_format)
            ends_step = (progress.batch + 1) % accumulate == 0 or progress.batch + 1 >= run.steps_per_epoch
            with distributed.syncing_gradients(run.forward, ends_step):
                with run.amp():
                    logits = run.forward(images)  # mixup/cutmix: soft targets for the loss, the accuracy on `labels`
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
                numbers.add(loss, logits, labels, progress.step + 1)
                if progress.batch % accumulate == 0:  # the first batch of an optimizer step
                    optim.clear_grads(run.optimizer)
                # trainer.accumulate_grad_batches: the mean over the step's batches, as one larger batch's loss
                group = min(accumulate, run.steps_per_epoch - progress.batch // accumulate * accumulate)
                run.scaler.scale(loss / group if group > 1 else loss).backward()
            progress.batch += 1
            progress.seen += len(labels) * rank.world
            if not ends_step:
                continue  # more batches add to this step's gradients (a stop waits for the step: resumable)
            lr = progress.lr = run.optimizer.param_groups[0]["lr"]  # this step's rate, before the scheduler moves it
            if clip:
                run.scaler.unscale_(run.optimizer)
                nn.utils.clip_grad_norm_(run.model.parameters(), clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            if run.per_step:
                run.scheduler.step()
            progress.step += 1
            if run.ema:
                run.ema.update(run.model, progress.step)
            logged = progress.step % every == 0 or progress.step == 1
            # one process stops at any step; several agree on it when they read, all at the same steps
            asked = stop.signum is not None
            stops = False
            if logged or progress.batch >= run.steps_per_epoch or (asked and rank.world == 1):
                stops = _read(run, numbers.read(asked, run.device, rank.world), writer if logged else None, lr)
                if drawing:  # tqdm redraws at most 10 times a second
                    elapsed = progress.train_seconds + time.perf_counter() - started
                    bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.4f}",
                                    acc=f"{progress.correct / progress.seen:.4f}",
                                    img_s=f"{progress.seen / max(elapsed, 1e-9):.0f}", refresh=False)
            after_step()
            if stops:
                return True
        return False
    finally:
        bar.close()
        progress.train_seconds += time.perf_counter() - started


def _read(run: Run, read: meter.Batches, writer: SummaryWriter | None, lr: float) -> bool:
    """Add what the device computed since the last read to the epoch's sums, and log the
    step just taken to `writer`; returns whether to stop. A NaN or infinite loss stops the
    run, naming the step where it first appeared."""
    progress = run.progress
    bad = read.first_non_finite()
    if bad is not None:
        raise UserError(_diverged(read.loss_sums[bad] / read.sizes[bad], progress.epoch, read.steps[bad],
                                  run.cfg.optimizer.lr, run.ckpt_dir))
    for loss_sum in read.loss_sums:  # in order, one batch at a time: the same sum at any reading cadence
        progress.loss_sum += loss_sum
    progress.correct += read.correct
    if writer is not None:
        writer.add_scalar("loss/train_step", read.step_loss(progress.step), progress.step)
        writer.add_scalar("lr", lr, progress.step)  # per step: the schedule's shape shows
    return read.stop


def _events_not_written(err: OSError, run_dir: Path) -> Exception:
    """TensorBoard's writer raises its thread's failed write (a full disk) with no path: name it."""
    if err.filename is not None:
        return err
    last = run_dir / "checkpoints" / "last.pt"
    kept = f"{last} is kept" if last.exists() else "no checkpoint was written yet"
    return UserError(f"cannot write TensorBoard events in {run_dir / 'tb'}: {err.strerror or err}; {kept}. Free "
                     f"some space, then continue with cnn-train resume={shlex.quote(str(run_dir))}")


class _NoWriter:
    """What the processes other than rank 0 log to TensorBoard: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _diverged(loss: float, epoch: int, step: int, lr: float, ckpt_dir: Path) -> str:
    """What a NaN or infinite loss at `step` says; `lr` is optimizer.lr, which the schedule scales."""
    last = ckpt_dir / "last.pt"
    kept = f"{last} keeps the state after epoch {epoch}" if last.exists() else "no checkpoint was written yet"
    return (f"epoch {epoch + 1}, step {step}: the loss is {loss}; the run stopped ({kept}). Try a lower "
            f"learning rate (optimizer.lr={lr / 10:g}) or trainer.grad_clip_norm=1")


def end_epoch(run: Run, writer: SummaryWriter) -> None:
    """Validate, log the epoch, step an epoch-wise schedule, save best.pt (if validation
    improved; with no validation split every epoch is the best so far) and last.pt."""
    cfg, progress, data, trainer = run.cfg, run.progress, run.data, run.cfg.trainer
    epoch = progress.epoch
    row = {"epoch": epoch + 1, "train_loss": progress.loss_sum / progress.seen,
           "train_acc": progress.correct / progress.seen,
           "lr": progress.lr, "img_per_s": progress.seen / progress.train_seconds,
           "epoch_seconds": progress.train_seconds}
    val_text, improved = "no validation", True
    if len(data.val):
        started = time.perf_counter()
        distributed.share_buffers(run.model)
        if run.ema:
            distributed.share_buffers(run.ema.model)
        val = evaluate(run.evaluated, data, data_mod.shard(data.val, run.rank.index, run.rank.world),
                       trainer.eval_batch_size, trainer.limit_val_batches, run.amp, run.memory_format, tta=trainer.tta)
        row.update(val_loss=val.loss, val_acc=val.accuracy, val_seconds=time.perf_counter() - started)
        improved = stopping.improved(row, progress.history, _chosen_by(trainer))
        val_text = f"val loss {val.loss:.4f} acc {val.accuracy:.4f}{' (best)' if improved else ''}"
    for key, tag in (("train_loss", "loss/train"), ("train_acc", "accuracy/train"), ("val_loss", "loss/val"),
                     ("val_acc", "accuracy/val"), ("img_per_s", "throughput/img_per_s"),
                     ("epoch_seconds", "time/epoch_seconds"), ("val_seconds", "time/val_seconds")):
        if key in row:
            writer.add_scalar(tag, row[key], progress.step)
    every = trainer.pictures_every_n_epochs
    if every and (epoch + 1) % every == 0 and epoch + 1 < trainer.epochs:  # the last epoch's come from finish()
        _log_pictures(run, writer, run.evaluated)
    if trainer.log_histograms:
        tb.write_histograms(writer, run.model, progress.step)
    log.info("epoch %d/%d  train loss %.4f acc %.4f | %s | lr %.3g | %.0f img/s, %.1f s", epoch + 1, trainer.epochs,
             row["train_loss"], row["train_acc"], val_text, row["lr"], row["img_per_s"], row["epoch_seconds"])
    progress.history.append(row)
    progress.epoch, progress.batch = epoch + 1, 0
    progress.loss_sum, progress.correct, progress.seen, progress.train_seconds = 0.0, 0, 0, 0.0
    if improved:
        progress.best_acc, progress.best_epoch = row.get("val_acc", -1.0), epoch + 1
    if not run.per_step:
        optim.step_after_epoch(run.scheduler, cfg.scheduler, row)
    if improved:  # best.pt first: a last.pt naming a best epoch always has its best.pt
        run.save("best.pt")
    run.save("last.pt")


def finish(run: Run, writer: SummaryWriter) -> float:
    """Test the best checkpoint once, write metrics.json and hparams, print the summary."""
    cfg, progress, data, rank, run_dir = run.cfg, run.progress, run.data, run.rank, run.run_dir
    if not distributed.same_weights(run.model):
        log.warning("the processes ended with different weights; rank 0's are saved")
    elif rank.world > 1:
        log.info("all %d processes hold identical weights", rank.world)
    distributed.barrier()  # rank 0 has written best.pt
    best = run.best()
    stopped_early = stopping.reason_to_stop(progress.history, cfg.trainer.early_stopping, cfg.trainer.epochs)
    if stopped_early:
        log.info(stopped_early)
    overfit = debugging.overfit_verdict(progress.history, cfg.trainer) if cfg.trainer.overfit_batches else None
    shard = data_mod.shard(data.test, rank.index, rank.world)
    test = evaluate(best, data, shard, cfg.trainer.eval_batch_size, cfg.trainer.limit_test_batches, run.amp,
                    run.memory_format, tta=cfg.trainer.tta)
    validated = bool(len(data.val))
    metrics = {"best_val_acc": progress.best_acc if validated else None, "best_epoch": progress.best_epoch,
               "test_acc": test.accuracy, "test_loss": test.loss}
    if rank.main and cfg.trainer.log_images:
        tb.add_picture(writer, functools.partial(tb.mistakes_grid, shard.images, test.predictions, test.labels,
                                                 list(cfg.dataset.classes), data.mean, data.std), progress.step)
        _log_pictures(run, writer, best)
    if rank.main:
        tb.end_session(writer, {f"result/{k}": v for k, v in metrics.items() if v is not None}, progress.step)
        report = {**metrics, "best_chosen_by": _chosen_by(cfg.trainer) if validated else NO_VALIDATION,
                  "stopped_early": stopped_early, "weights": "ema" if run.ema else "trained",
                  "dataset": data.name, "model": run.record["model"]["name"],
                  "params": sum(p.numel() for p in run.model.parameters()), "epochs": progress.epoch,
                  "steps": progress.step, "history": progress.history, "run_dir": str(run_dir),
                  "processes": rank.world, **checkpoint.versions()}
        if overfit is not None:
            report["overfit_check"] = "passed" if overfit[0] else "failed"
        if data.skipped_files is not None:  # dataset=imagefolder: unreadable files left out
            report["skipped_files"] = data.skipped_files
        files.write_text(run_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
    run.save("last.pt", finished=True)
    rule = "-" * 60
    best_text = f"{progress.best_acc:.4f} (epoch {progress.best_epoch})" if validated else \
        f"none (dataset.val_size=0); best.pt is the last epoch ({progress.best_epoch})"
    tested = "best.pt" if run.best_weights is None else "best weights, trainer.checkpoints=false"
    log.info("\n%s\nbest val acc   %s\ntest acc       %.4f  (%s, %d test samples, %s)\n"
             "run folder     %s\ntensorboard    tensorboard --logdir %s\n%s",
             rule, best_text, test.accuracy, tested, len(test.labels) * rank.world, data.name, run_dir, run_dir, rule)
    if overfit is not None:
        (log.info if overfit[0] else log.warning)(overfit[1])
    return progress.best_acc if validated else math.nan


def _chosen_by(trainer: DictConfig) -> str:
    """What best.pt is chosen by: early stopping's monitor when it is on, else validation accuracy."""
    return trainer.early_stopping.monitor if trainer.early_stopping.patience is not None else "val_acc"


def _log_pictures(run: Run, writer: SummaryWriter, model: nn.Module) -> None:
    """The first conv layer's filters, and what every conv layer sees of the same two test samples."""
    if run.rank.main:
        tb.add_picture(writer, functools.partial(tb.first_conv_filters, model), run.progress.step)
        two = data_mod.normalize(run.data.test.images[:2], run.data.mean, run.data.std)
        tb.add_picture(writer, functools.partial(tb.feature_maps, model, two), run.progress.step)


def _progress(saved: dict[str, Any], key: str) -> Progress:
    """A checkpoint's progress record, each entry of its type (a damaged or edited one is refused, not trained on)."""
    kinds = {f.name: {"int": (int,), "float": (float, int)}.get(f.type, (list,)) for f in fields(Progress)}
    wrong = sorted(set(saved) - set(kinds)) or [name for name, value in saved.items()
                                                if isinstance(value, bool) or not isinstance(value, kinds[name])]
    if wrong or not all(isinstance(row, dict) for row in saved.get("history", [])) or min(
            saved.get("epoch", 0), saved.get("batch", 0), saved.get("step", 0)) < 0:
        raise UserError(f"{key}: the checkpoint's 'progress' record is damaged ({', '.join(wrong) or 'its values'}); "
                        "it was edited or written by another program: resume from another checkpoint")
    return Progress(**saved)


def _log_graph(writer: SummaryWriter, model: nn.Module, data: data_mod.Data) -> None:
    example = data_mod.normalize(data.train.images[:2], data.mean, data.std)
    try:
        was_training = model.training
        with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns it is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            writer.add_graph(model.eval(), example)
        model.train(was_training)
    except Exception as err:  # tracing is best effort: a graph is not worth failing a run
        log.warning("could not trace the model graph for TensorBoard: %s", first_line(err))
