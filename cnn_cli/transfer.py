"""Transfer learning: start from weights trained elsewhere, freeze what should stay, and give
the pretrained layers their own learning rate.

Weights load layer by layer where name and shape match (init_from=, model.pretrained); the
rest (typically the head, for a new class count) starts fresh, and the log says which is which.
Frozen layers get no gradient, and their batchnorm keeps its running statistics (eval mode)
while the rest trains: batch statistics of a small new dataset would otherwise replace them.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch
from omegaconf import ListConfig
from torch import nn

from cnn_cli.errors import UserError

log = logging.getLogger(__name__)


def _group(key: str) -> str:
    """The top-level layer a state_dict key belongs to (res3.body.conv1.weight -> res3): a row
    of the shape table's Name column."""
    return key.split(".", 1)[0]


def _runs(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names)) or "none"


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                  new_classes: bool = False) -> list[str]:
    """Load every layer whose tensors all match the model's in name and shape; the rest of the
    model keeps its fresh initialisation. With `new_classes` (the source scored other classes)
    the head, the layer of the last parameters, starts fresh even where its shape fits. Logs,
    group by group, what loaded and what is fresh; returns the names of the parameters that
    loaded. Nothing matching is an error."""
    own = model.state_dict()
    head = _group(list(dict(model.named_parameters()))[-1]) if new_classes else None
    fits = {k for k, v in weights.items() if k in own and own[k].shape == v.shape and _group(k) != head}
    layers: dict[str, list[str]] = {}
    for key in own:  # a layer loads whole (weight, bias, statistics) or not at all
        layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    matched = {k: weights[k] for keys in layers.values() if all(k in fits for k in keys) for k in keys}
    if not any(k in matched for k, _ in model.named_parameters()):
        sample = ", ".join(list(weights)[:3])
        raise UserError(f"{source}: none of its weights fit this model (no layer with the same name and shape; it "
                        f"holds {sample}, ...); use weights of the same architecture")
    fresh = [k for k in own if k not in matched]
    unused = [k for k in weights if k not in matched]
    model.load_state_dict(matched, strict=False)
    loaded_groups = [_group(k) for k in own if k in matched]
    fresh_groups = [_group(k) for k in fresh]
    partial = set(loaded_groups) & set(fresh_groups)
    log.info("%s: loaded %d of %d tensors: %s", source, len(matched), len(own), _runs(loaded_groups))
    for name in dict.fromkeys(fresh_groups):
        why = [f"{k} {tuple(weights[k].shape)} there vs {tuple(own[k].shape)} here" for k in fresh
               if _group(k) == name and k in weights]
        what = "partly fresh" if name in partial else "fresh"
        reason = "the head, for other classes than the source's" if name == head else \
            "; ".join(why) if why else "not in the source"
        log.info("%s: %s %s (%s)", source, name, what, reason)
    if unused:
        log.info("%s: not used (no layer of that name and shape here): %s", source, _runs(map(_group, unused)))
    params = dict(model.named_parameters())
    return [k for k in matched if k in params]


def frozen_layers(model: nn.Module, spec: Any) -> list[str]:
    """trainer.freeze: a list of layer names (the Name column: conv1, res3, res3.body.conv1) or
    'up to NAME' (every top-level layer from the first through NAME)."""
    if spec is None or spec == []:
        return []
    names = dict(model.named_modules())
    top = [name for name, _ in model.named_children()]
    if isinstance(spec, str) and spec.startswith("up to "):
        last = spec[len("up to "):].strip()
        _known(last, top, "trainer.freeze='up to NAME'", "a top-level layer")
        chosen = top[:top.index(last) + 1]
    elif isinstance(spec, str) or isinstance(spec, (list, ListConfig)) and all(isinstance(s, str) for s in spec):
        chosen = [spec] if isinstance(spec, str) else list(spec)
        for name in chosen:
            _known(name, [n for n in names if n], "trainer.freeze", "a layer")
    else:
        raise UserError(f"trainer.freeze={spec!r}: give layer names, e.g. trainer.freeze=[conv1,bn1,res1], or "
                        "trainer.freeze='up to res6'")
    frozen = {id(p) for name in chosen for p in names[name].parameters()}
    trainable = [p for p in model.parameters() if id(p) not in frozen]
    if not trainable:
        raise UserError(f"trainer.freeze={spec!r} freezes every layer: nothing would train; leave at least the "
                        f"head ({top[-1]}) out")
    return chosen


def _known(name: str, known: list[str], key: str, what: str) -> None:
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {near[0]}?" if near else f"the model's layers: {', '.join(known[:12])}, ..."
        raise UserError(f"{key}: '{name}' is not {what} of this model (see cnn-summary's Name column); {hint}")


def freeze(model: nn.Module, names: list[str]) -> None:
    """No gradient for these layers' parameters."""
    modules = dict(model.named_modules())
    for name in names:
        modules[name].requires_grad_(False)


def train_mode(model: nn.Module, frozen: list[str]) -> None:
    """model.train(), but batchnorm inside frozen layers stays in eval mode: it normalises with
    the statistics it came with and does not update them."""
    model.train()
    modules = dict(model.named_modules())
    for name in frozen:
        for layer in modules[name].modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


def param_groups(model: nn.Module, pretrained: list[str], lr: float, scale: float) -> list[dict[str, Any]]:
    """The trainable parameters in (up to) two optimizer groups: fresh ones at the configured
    rate and pretrained ones at `scale` times it (discriminative rates). `lr_scale` travels in
    each group so that a schedule with its own peak (OneCycleLR's max_lr) scales it too."""
    loaded = set(pretrained) if scale != 1 else set()
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    fresh = [p for k, p in named if k not in loaded]
    groups = [{"params": fresh, "lr_scale": 1.0}] if fresh else []
    old = [p for k, p in named if k in loaded]
    if old:
        groups.append({"params": old, "lr": lr * scale, "lr_scale": scale})
    return groups
