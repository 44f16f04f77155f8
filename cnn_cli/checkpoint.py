"""Checkpoints: written atomically, read as data only.

A checkpoint is a dict of tensors, numbers, strings and the resolved config as plain
containers, so `torch.load(weights_only=True)` reads it and a shared checkpoint can
never run code when it is opened. What a checkpoint holds besides weights (the RNG states,
the versions, whether its run finished) and how a resume rebuilds its config from it (what
may change, RESUMABLE) are here too: train.py only asks.
"""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.resolvers import oc

import cnn_cli
from cnn_cli import bounds, files, optim
from cnn_cli.errors import UserError, first_line


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a reader (or a crash) sees the previous checkpoint or the new one,
    never a torn file."""
    files.write_file(path, lambda f: torch.save(state, f))


def resolve(path: str | Path, key: str, prefer: tuple[str, ...] = ("last.pt",)) -> Path:
    """A run folder means the first of `prefer` in its checkpoints/; a file is taken as it is."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / "checkpoints" / name for name in prefer if (p / "checkpoints" / name).is_file()]
        if not found:
            raise UserError(f"{key}={path}: no checkpoint there (no {' or '.join(prefer)} in {p / 'checkpoints'}); "
                            "give a run folder (outputs/NAME/DATE_TIME) or a .pt file such as "
                            f"outputs/NAME/DATE_TIME/checkpoints/{prefer[0]}")
        p = found[0]
    if not p.is_file():
        raise UserError(f"{key}={path}: no checkpoint there; give a run folder (outputs/NAME/DATE_TIME) "
                        f"or a .pt file such as outputs/NAME/DATE_TIME/checkpoints/{prefer[0]}")
    return p


def load(path: str | Path, key: str = "checkpoint", prefer: tuple[str, ...] = ("last.pt",)) -> dict[str, Any]:
    """Read a checkpoint on the CPU, refusing anything that is not plain data."""
    p = resolve(path, key, prefer)
    if not zipfile.is_zipfile(p):  # every torch.save since PyTorch 1.6 writes a zip archive
        raise UserError(f"{key}={path}: {p} is not a readable checkpoint (empty, truncated, or not a cnn-cli "
                        "checkpoint)")
    bounds.check_archive(p, f"{key}={path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if not found:
            raise UserError(f"{key}={path}: {p} is not a readable checkpoint (its contents do not unpickle)") from None
        raise UserError(f"{key}={path}: refused to open {p}: it holds objects that are not plain data "
                        f"({found.group(1)}), and loading it could run code; open it only if you trust where it "
                        "came from") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as err:
        reason = re.split(r"\. ", first_line(err))[0][:160]
        raise UserError(f"{key}={path}: {p} is not a readable checkpoint (truncated or not a cnn-cli "
                        f"checkpoint: {reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{key}={path}: {p} is not a cnn-cli checkpoint (no model weights and config in it)")
    bounds.check_record(state, f"{key}={path}: {p}")
    for entry, kind in FORMAT.items():
        if not isinstance(state.get(entry), kind):
            raise UserError(f"{key}={path}: {p} is not a complete cnn-cli checkpoint ('{entry}' is "
                            f"{'missing' if entry not in state else type(state[entry]).__name__}); it was damaged "
                            "or written by another program")
    for entry in ("model", "ema"):
        weights = state.get(entry, {})
        if not (isinstance(weights, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in weights.items())):
            raise UserError(f"{key}={path}: {p}: its '{entry}' is not a state dict of tensors; it was damaged or "
                            "written by another program")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, Any], key: str, averaged: bool = True) -> None:
    """Load a checkpoint's weights, naming every key that does not fit: the moving average's
    (trainer.ema_decay) where the run kept one, unless `averaged` is False (a resume)."""
    weights = state["ema"] if averaged and "ema" in state else state["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"missing {', '.join(missing[:5])}" * bool(missing),
                 f"unexpected {', '.join(unexpected[:5])}" * bool(unexpected),
                 f"shape mismatch {', '.join(mismatched[:5])}" * bool(mismatched)]
        arch = state.get("config", {}).get("model", {}).get("name", "?")
        raise UserError(f"{key}: its weights (model '{arch}') do not fit this model: "
                        f"{'; '.join(p for p in parts if p)}; use a checkpoint of the same architecture")
    model.load_state_dict(weights)


# what every checkpoint holds (train.Run.state_dict writes it), and of which type: checked on
# reading, before anything uses it
FORMAT: dict[str, type] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "progress": dict, "rng": dict,
    "config": dict, "finished": bool, "versions": dict}


def recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, for checkpoints and TensorBoard: every text value
    that comes from the environment (${oc.env:KEY}, also through other keys) is recorded as
    that interpolation, so a secret never leaves this machine inside a shared checkpoint.
    A number or switch from the environment (trainer.epochs=${oc.env:EP}) is recorded as its
    value, which the run needs to be resumed and its model rebuilt."""
    values = OmegaConf.to_container(cfg, resolve=True)
    untyped = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # env text need not convert to a type
    OmegaConf.register_new_resolver("oc.env", lambda key, default=None: f"${{oc.env:{key}}}", use_cache=False,
                                    replace=True)
    try:
        texts = OmegaConf.to_container(untyped, resolve=True)
    finally:
        OmegaConf.register_new_resolver("oc.env", oc.env, use_cache=False, replace=True)
    return _hide_env_text(values, texts)


def environment_values(cfg: DictConfig, record: dict[str, Any]) -> dict[str, str]:
    """Each text value that came from the environment (3 characters or more), mapped to how the
    record shows it (`${oc.env:KEY}`), for the run's log to show it the same way."""
    found: dict[str, str] = {}

    def walk(value: Any, text: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, text.get(key) if isinstance(text, dict) else None)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, text[i] if isinstance(text, list) and i < len(text) else None)
        elif isinstance(value, str) and isinstance(text, str) and value != text and len(value) >= 3:
            found[value] = text

    walk(OmegaConf.to_container(cfg, resolve=True), record)
    return found


class HideEnvironment(logging.Filter):
    """Shows values from the environment in log lines as the checkpoint records them."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self.values = sorted(values.items(), key=lambda item: -len(item[0]))  # the longest first

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for value, text in self.values:
            message = message.replace(value, text)
        record.msg, record.args = message, ()
        return True


def _hide_env_text(value: Any, text: Any) -> Any:
    """`value` with each string replaced by `text`'s where that names an environment variable."""
    if isinstance(value, dict):
        return {k: _hide_env_text(v, text.get(k) if isinstance(text, dict) else None) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_env_text(v, text[i] if isinstance(text, list) and i < len(text) else None)
                for i, v in enumerate(value)]
    if isinstance(value, str) and isinstance(text, str) and "${oc.env:" in text:
        return text
    return value


def stored_config(config: dict[str, Any]) -> DictConfig:
    """A checkpoint's config as data: an interpolation left in it (a recorded ${oc.env:KEY},
    or one planted by whoever shared it) is text, never resolved on this machine."""
    return OmegaConf.create(_escape(optim.upgrade(config)))


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value


# what may differ when a run is resumed: where and how visibly it runs, never what it computes
RESUMABLE = ("trainer.device", "trainer.progress", "trainer.num_threads", "trainer.log_every_n_steps",
             "trainer.log_histograms", "trainer.pictures_every_n_epochs", "dataset.root", "dataset.download")


def resumed_config(resumed: dict[str, Any], task_overrides: list[str]) -> DictConfig:
    """The checkpoint's own config, plus overrides of where it runs (e.g. trainer.device)."""
    changes = [o for o in task_overrides if not o.startswith(("resume=", "hydra."))]
    for override in changes:
        if override.split("=", 1)[0] not in RESUMABLE:
            raise UserError(f"resume: '{override}' would change the run, which continues exactly as it started; "
                            f"only {', '.join(RESUMABLE)} may be given. For a changed run, start a new one with "
                            "init_from=<its last.pt>")
    return OmegaConf.merge({"trainer": BEFORE_THESE_KEYS}, stored_config(resumed["config"]),
                           OmegaConf.from_dotlist(changes))


# trainer keys newer than some checkpoints, and what a run without them did
BEFORE_THESE_KEYS = {"ema_decay": None, "tta": None, "accumulate_grad_batches": 1, "pictures_every_n_epochs": None,
                     "limit_test_batches": None, "overfit_batches": None, "profile_steps": None,
                     "keep_run_folder": True, "log_graph": True, "log_images": True, "checkpoints": True,
                     "freeze": None, "pretrained_lr_scale": 1.0, "fit_to_data": False,
                     "early_stopping": {"patience": None, "monitor": "val_loss", "min_delta": 0.0}}


def run_finished(resume: str, resumed: dict[str, Any]) -> bool:
    """Whether the run a resume names has finished: its last.pt says so, whichever of its
    checkpoints was named. A run continues from its last.pt, never from an earlier one."""
    path = resolve(resume, "resume")
    last = path.with_name("last.pt")
    if path == last or not last.is_file():
        return resumed["finished"]
    if load(last, "resume")["finished"]:
        return True
    raise UserError(f"resume={resume}: a run continues from its last.pt, not {path.name}; use "
                    f"resume={shlex.quote(str(path.parent.parent))} (or init_from={shlex.quote(resume)} to start a "
                    "new run from these weights)")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"torch": str(torch.__version__), "torchvision": importlib.metadata.version("torchvision"),
            "cnn_cli": cnn_cli.__version__}
