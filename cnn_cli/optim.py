"""Optimizers and learning-rate schedules, named as torch.optim names them.

A config names its class (`name: SGD`, `name: OneCycleLR`) and gives that class's own
keyword arguments, so the PyTorch docs apply and nothing but a torch.optim class can be
named (configs travel inside shared checkpoints). Every rule about them lives here: the
lookup, the keys checked against the class's signature before any data is read, the run
length the trainer fills in, the optional warm-up, and when each schedule steps.
"""

from __future__ import annotations

import difflib
import inspect
import types
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim import lr_scheduler

from cnn_cli.errors import UserError

# what the training loop cannot drive: LBFGS steps with a closure, SparseAdam needs sparse
# gradients, Muon takes only 2-D weights
_NOT_TRAINABLE_HERE = ("Optimizer", "LBFGS", "SparseAdam", "Muon")
OPTIMIZERS: dict[str, type] = {
    name: cls for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and name not in _NOT_TRAINABLE_HERE}
_SCHEDULER_BASES = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
# the ones that take other schedulers or a function: not expressible as plain config values
_NOT_CONFIGURABLE = ("LRScheduler", "_LRScheduler", "SequentialLR", "ChainedScheduler", "LambdaLR",
                     "MultiplicativeLR")
SCHEDULERS: dict[str, type] = {
    name: cls for name, cls in vars(lr_scheduler).items()
    if isinstance(cls, type) and issubclass(cls, _SCHEDULER_BASES) and name not in _NOT_CONFIGURABLE}
# run lengths the trainer fills in when the config leaves them null
LENGTH_KEYS = {"CosineAnnealingLR": "T_max", "OneCycleLR": "total_steps"}
# our own keys beside the scheduler's arguments: (name, type, default)
SCHEDULER_KEYS = [("interval", str, "epoch"), ("warmup_epochs", int, 0)]
MONITORED = {"val_loss": "min", "val_acc": "max"}  # what ReduceLROnPlateau may watch, and its mode


def arguments(cls: type) -> list[inspect.Parameter]:
    """The keyword arguments a config may give: all but the first (params, or the optimizer)."""
    return list(inspect.signature(cls).parameters.values())[1:]


def check(cfg: DictConfig, epochs: int) -> None:
    """The optimizer and scheduler configs name torch.optim classes and give only their
    arguments (a key left from another class, e.g. SGD's momentum after
    optimizer.name=Adadelta, is an error here, before any data is read)."""
    _check_keys("optimizer", _lookup(cfg.optimizer, OPTIMIZERS, "optimizer", "torch.optim"), cfg.optimizer)
    scheduler = cfg.scheduler
    cls = _lookup(scheduler, SCHEDULERS, "scheduler", "torch.optim.lr_scheduler")
    ours = [name for name, _, _ in SCHEDULER_KEYS] + (["monitor"] if cls is lr_scheduler.ReduceLROnPlateau else [])
    _check_keys("scheduler", cls, scheduler, ours)
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, (int, float)) and not lr > 0:
        raise UserError(f"optimizer.lr={lr} must be > 0, e.g. optimizer.lr=0.01")
    if scheduler.get("interval", "epoch") not in ("epoch", "step"):
        raise UserError(f"scheduler.interval={scheduler.interval}: choose epoch or step")
    warmup = scheduler.get("warmup_epochs", 0)
    if not 0 <= warmup < epochs:
        raise UserError(f"scheduler.warmup_epochs={warmup} must be >= 0 and less than trainer.epochs={epochs}")
    _check_monitor(scheduler)


def _lookup(cfg: DictConfig, known: dict[str, type], group: str, module: str) -> type:
    name = cfg.get("name")
    if name in known:
        return known[name]
    near = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {near[0]}?" if near else f"choose one of {', '.join(sorted(known))}"
    raise UserError(f"{group}.name={name}: not a {module} class this trainer can use; {hint}")


def _check_keys(group: str, cls: type, cfg: DictConfig, ours: list[str] = ()) -> None:
    params = arguments(cls)
    accepted = [p.name for p in params]
    for key in cfg:
        if key != "name" and key not in accepted and key not in ours:
            near = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"did you mean {group}.{near[0]}? " if near else ""
            raise UserError(f"{group}.{key}: {cls.__name__} takes no such argument; {hint}choose the class with "
                            f"{group}={cls.__name__.lower()} rather than {group}.name ({cls.__name__} takes: "
                            f"{', '.join(accepted)})")
    for p in params:  # betas=(0.9, 0.999): a pair, whose indexing inside torch would fail without the key's name
        if isinstance(p.default, tuple) and p.name in cfg:
            value = cfg[p.name]
            if not isinstance(value, ListConfig) or len(value) != len(p.default):
                raise UserError(f"{group}.{p.name}={value}: {cls.__name__} takes {len(p.default)} values here, "
                                f"e.g. {group}.{p.name}=[{','.join(map(str, p.default))}]")
    length = LENGTH_KEYS.get(cls.__name__)
    missing = [p.name for p in params
               if p.default is inspect.Parameter.empty and p.name not in cfg and p.name != length]
    if missing:
        raise UserError(f"{group}.{missing[0]} must be given for {cls.__name__}, e.g. +{group}.{missing[0]}=VALUE")


def _check_monitor(scheduler: DictConfig) -> None:
    """ReduceLROnPlateau (the one scheduler with a monitor) steps once per epoch on a
    validation metric, in the direction that metric improves, with no warm-up before it."""
    monitor = scheduler.get("monitor")
    if monitor is None:
        return
    if monitor not in MONITORED:
        raise UserError(f"scheduler.monitor={monitor}: choose {' or '.join(MONITORED)}")
    if scheduler.mode != MONITORED[monitor]:
        direction = "falls" if MONITORED[monitor] == "min" else "rises"
        raise UserError(f"scheduler.monitor={monitor} improves as it {direction}: "
                        f"set scheduler.mode={MONITORED[monitor]}")
    if scheduler.interval != "epoch":
        raise UserError(f"scheduler.interval={scheduler.interval}: ReduceLROnPlateau steps once per epoch, on the "
                        "validation metric; use scheduler.interval=epoch")
    if scheduler.warmup_epochs:
        raise UserError(f"scheduler.warmup_epochs={scheduler.warmup_epochs}: ReduceLROnPlateau cannot follow a "
                        "warm-up (PyTorch's SequentialLR would not pass it the metric); set it to 0")


def build_optimizer(cfg: DictConfig, params: Any, device: torch.device, scaled: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer, on parameters on `device` (`scaled`: under a gradient scaler,
    precision=16), with the fastest kernels it has (`_kernels`). Its step skips torch.optim's
    torch._dynamo wrappers (`_without_dynamo`)."""
    options = OmegaConf.to_container(cfg, resolve=True)
    _kernels(options, device, scaled)
    _skip_dynamo_disable()
    return _without_dynamo(_construct("optimizer", OPTIMIZERS, options, params))


# the classes whose fused kernel (one call updates every parameter: a third of foreach's time
# a step on the CPU, one launch instead of several on a GPU) runs on CPU and CUDA in every
# PyTorch this package supports; Adagrad's fused kernel is CPU-only, others have none
FUSED = {"SGD", "Adam", "AdamW"}


def _kernels(options: dict[str, Any], device: torch.device, scaled: bool) -> None:
    """foreach=null and fused=null (PyTorch's defaults) mean the fastest kernels here, on
    every device: fused where the class has them for this device, else foreach (one call for
    all parameters instead of one each). Setting either key keeps PyTorch's own rule.
    Not fused SGD under a gradient scaler: when its first step overflows (a scaler's first
    scale often does), PyTorch's fused SGD keeps momentum buffers it never filled."""
    if "foreach" not in options or options["foreach"] is not None or options.get("fused") is not None:
        return
    fused = (options["name"] in FUSED and device.type in ("cpu", "cuda") and not options.get("differentiable")
             and not (scaled and options["name"] == "SGD"))
    options["fused" if fused else "foreach"] = True


def load_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """A saved optimizer state, its kernels this run's choice (`_kernels`), not the saving
    run's: another device or PyTorch may lack the saved ones."""
    kernels = [{key: group[key] for key in ("foreach", "fused") if key in group} for group in optimizer.param_groups]
    # into the saved groups before loading: PyTorch places Adam's step counters by them (fused: on the device)
    groups = [{**saved, **(kernels[i] if i < len(kernels) else {})} for i, saved in enumerate(state["param_groups"])]
    optimizer.load_state_dict({**state, "param_groups": groups})


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """optimizer.zero_grad(set_to_none=True) without its profiler annotation, which costs the
    host more than the rest of it: tens of microseconds a step (docs/performance.md)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


# torch.optim's Optimizer wraps add_param_group, zero_grad, state_dict and load_state_dict in
# torch._disable_dynamo, and every step in a function that calls torch._dynamo.graph_break().
# Both keep torch.compile from tracing the optimizer, and both import torch._dynamo on first
# use: a second or more of start-up, several on a busy machine (docs/performance.md). This
# trainer compiles only the model, never the optimizer, so neither wrapper does anything here.
_DISABLE_CACHE = "__dynamo_disable"  # where torch._disable_dynamo keeps the function it made


def _skip_dynamo_disable() -> None:
    """Tell each of Optimizer's torch._disable_dynamo wrappers that its function needs no
    wrapping. Harmless if a later PyTorch keeps it elsewhere: torch._dynamo is then imported."""
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        function = getattr(torch.optim.Optimizer, name).__wrapped__
        setattr(function, _DISABLE_CACHE, function)


def _without_dynamo(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer, its step the class's own step function under no_grad, as torch.optim
    runs it, without the graph-break wrapper (nor step hooks, which nothing here sets)."""
    if optimizer.defaults.get("differentiable"):
        return optimizer
    step = inspect.unwrap(type(optimizer).step)

    def lean_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        with torch.no_grad():
            return step(self, closure)

    optimizer.step = types.MethodType(lean_step, optimizer)  # a bound method, as LRScheduler expects to wrap
    return optimizer


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    epochs: int) -> tuple[lr_scheduler.LRScheduler, bool]:
    """The configured schedule, after an optional linear warm-up; returns it and whether it
    steps every optimizer step (else every epoch). The run's length (T_max, total_steps) is
    filled in here, since only the trainer knows the steps per epoch."""
    options = OmegaConf.to_container(cfg, resolve=True)
    per_step = options.pop("interval", "epoch") == "step"
    options.pop("monitor", None)  # ReduceLROnPlateau's metric, which step_after_epoch passes to it
    warmup = options.pop("warmup_epochs", 0) * (steps_per_epoch if per_step else 1)
    total = epochs * (steps_per_epoch if per_step else 1)
    length_key = LENGTH_KEYS.get(options["name"])
    if length_key and options.get(length_key) is None:
        options[length_key] = max(1, total - warmup)
    if options["name"] == "OneCycleLR":
        _check_one_cycle(options)
    if "max_lr" in options:  # OneCycleLR sets each group's rate itself: keep the groups' scales (transfer)
        options["max_lr"] = [options["max_lr"] * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    main = _construct("scheduler", SCHEDULERS, options, optimizer)
    if not warmup:
        return main, per_step
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup]), per_step


def _check_one_cycle(options: dict[str, Any]) -> None:
    """OneCycleLR divides by its warm-up's length less one step, so a warm-up of exactly one step
    would stop with torch's 'float division by zero'; say which numbers clash instead."""
    steps, pct = options["total_steps"], options.get("pct_start", 0.3)
    if pct * steps == 1:
        raise UserError(f"scheduler.pct_start={pct} of {steps} steps gives OneCycleLR a warm-up of one step, which "
                        "it cannot schedule: train more steps (trainer.epochs, trainer.limit_train_batches) or change "
                        "scheduler.pct_start")


def step_after_epoch(scheduler: Any, cfg: DictConfig, row: dict[str, float]) -> None:
    """An epoch-wise schedule steps after validation; ReduceLROnPlateau on the metric it watches."""
    monitor = cfg.get("monitor")
    scheduler.step(*([row[monitor]] if monitor else []))


def _construct(group: str, known: dict[str, type], options: dict[str, Any], first: Any) -> Any:
    name = options.pop("name")
    try:
        return known[name](first, **options)
    except Exception as err:  # the constructor's own complaint, e.g. an invalid learning rate
        raise UserError(f"{group}: cannot build {name}: {str(err).strip().splitlines()[-1]}") from None


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config from before classes were named (`_target_: torch.optim.SGD`,
    `_partial_: true`), as it is written now (`name: SGD`), so older runs resume."""
    upgraded = dict(config)
    for group in ("optimizer", "scheduler"):
        node = config.get(group)
        if isinstance(node, dict) and isinstance(node.get("_target_"), str):
            named = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
            upgraded[group] = {"name": node["_target_"].rsplit(".", 1)[-1], **named}
    return upgraded
