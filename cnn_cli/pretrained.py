"""torchvision's published weights for the models declared in YAML (model.pretrained).

A model config with `torchvision: resnet18` is built to torchvision's layout, so torchvision's
state_dict maps one to one onto ours: the key table pairs the two state_dicts in order and
checks that each pair is the same kind of tensor with the same shape. Our names (the shape
table's Name column) stay ours; torchvision's are translated on loading.

`model.pretrained=imagenet` gets torchvision's own weights through its weights API, into
torch's hub cache with the published hash checked; `model.pretrained=PATH.pth` reads a
torchvision state_dict file as data only (weights_only).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig
from torch import nn

from cnn_cli.errors import UserError, first_line

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # what every torchvision ImageNet weight was trained with
IMAGENET_STD = [0.229, 0.224, 0.225]


def _models() -> ModuleType:
    """torchvision.models, imported only when weights are asked for: importing torchvision
    imports torch._dynamo, a second or more that a run without pretrained weights need not pay."""
    import torchvision.models

    return torchvision.models


def counterpart(model_cfg: DictConfig) -> str:
    """The torchvision network a model config follows; pretrained weights need one."""
    arch = model_cfg.get("torchvision")
    if not arch:
        raise UserError(f"model.pretrained={model_cfg.get('pretrained')}: the model '{model_cfg.get('name')}' has no "
                        "torchvision counterpart whose weights could load; use model=resnet18, resnet34, resnet50 or "
                        "mobilenet_v2, or start from a cnn-cli checkpoint with init_from=")
    if arch not in _models().list_models(_models()):
        raise UserError(f"model.torchvision={arch}: not a torchvision classification model")
    return arch


def key_table(arch: str, model: nn.Module, num_classes: int) -> dict[str, str]:
    """torchvision's state_dict key -> ours, pairing the two in order; each pair must be the
    same kind of tensor (weight, running_mean, ...) of the same shape, so a config that
    drifted from torchvision's layout is caught here and not as wrong predictions."""
    with torch.device("meta"):  # the layout only: no memory, no initialisation cost
        theirs = _models().get_model(arch, num_classes=num_classes).state_dict()
    ours = model.state_dict()
    for (their_key, their), (our_key, own) in zip(theirs.items(), ours.items()):
        if their_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or their.shape != own.shape:
            raise UserError(f"model.torchvision={arch}: the model's {our_key} {tuple(own.shape)} does not match "
                            f"torchvision's {their_key} {tuple(their.shape)}; its layers must follow torchvision's "
                            f"{arch} for its weights to load")
    if len(theirs) != len(ours):
        extra = list(theirs)[len(ours):] or list(ours)[len(theirs):]
        side = "torchvision's" if len(theirs) > len(ours) else "the model's"
        raise UserError(f"model.torchvision={arch}: {side} {', '.join(extra[:4])} ... have no counterpart; its layers "
                        f"must follow torchvision's {arch} for its weights to load")
    return dict(zip(theirs, ours))


def translate(weights: dict[str, torch.Tensor], table: dict[str, str], arch: str, source: str) -> dict[str, Any]:
    """A torchvision state_dict in our names; a key on either side without its pair is an error
    naming the keys (a file of another architecture)."""
    unknown = [k for k in weights if k not in table]
    missing = [k for k in table if k not in weights]
    if unknown or missing:
        parts = [f"unknown keys {', '.join(unknown[:4])}" * bool(unknown),
                 f"missing keys {', '.join(missing[:4])}" * bool(missing)]
        raise UserError(f"{source}: not a torchvision {arch} state_dict ({'; '.join(p for p in parts if p)}); give "
                        f"the weights of {arch}, or the model they belong to")
    return {table[k]: v for k, v in weights.items()}


def read_file(path: str, source: str) -> dict[str, torch.Tensor]:
    """A torchvision state_dict file (torch.save(model.state_dict(), PATH)), read as data only."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{source}: no such file; give model.pretrained=imagenet or the path of a torchvision "
                        "state_dict file (.pth)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or objects that are not data
        raise UserError(f"{source}: not a readable state_dict file ({first_line(err)[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "config" in state:
        raise UserError(f"{source}: this is a cnn-cli checkpoint; start from it with init_from={path}")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{source}: not a state_dict (a mapping of names to tensors, as torch.save(model."
                        "state_dict(), PATH) writes)")
    return state


def imagenet(arch: str, source: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for `arch`, from torch's hub cache, downloaded
    there (hash checked) when missing. Offline: one line naming the file and where it goes."""
    url = _models().get_model_weights(arch).DEFAULT.url
    name = os.path.basename(urlparse(url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / name
    if cached.is_file():
        _check_hash(cached, source)
        return read_file(str(cached), source)
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu", check_hash=True,
                                                  weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"{source}: cannot download {url} ({first_line(reason)}); offline, place {name} in "
                        f"{folder}/ (or give model.pretrained=PATH.pth)") from None
    except RuntimeError as err:  # torch.hub's hash check
        raise UserError(f"{source}: the download of {url} failed its hash check ({first_line(err)}); try "
                        "again") from None


def _check_hash(path: Path, source: str) -> None:
    """torchvision's file names carry the start of their SHA-256 (resnet18-f37072fd.pth): a
    file placed by hand is checked against it as torch.hub checks a download."""
    prefix = re.search(r"-([a-f0-9]{6,})\.", path.name)
    if prefix is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix.group(1)):
        raise UserError(f"{source}: {path} is not the published file (its SHA-256 does not start with "
                        f"{prefix.group(1)}); delete it and download it again from torchvision's URL")


def load(model: nn.Module, model_cfg: DictConfig, num_classes: int) -> dict[str, torch.Tensor]:
    """model.pretrained's weights in our names, for transfer.load_matching."""
    value = str(model_cfg.pretrained)
    source = f"model.pretrained={value}"
    arch = counterpart(model_cfg)
    table = key_table(arch, model, num_classes)
    weights = imagenet(arch, source) if value == "imagenet" else read_file(value, source)
    return translate(weights, table, arch, source)


def default_normalisation(cfg: DictConfig) -> None:
    """Pretrained weights expect the normalisation they were trained with: ImageNet's mean and
    std unless the dataset config gives its own (recorded in the run's config)."""
    if cfg.model.get("pretrained") and cfg.dataset.get("mean") is None and cfg.dataset.get("std") is None:
        channels = cfg.dataset.input_shape[0] if cfg.dataset.get("input_shape") else 3
        if channels == 3:
            cfg.dataset.mean, cfg.dataset.std = IMAGENET_MEAN, IMAGENET_STD
