"""What a run shows in TensorBoard beyond scalars: hparams, filters, feature maps, mistakes,
histograms, and the chart layout.

TensorBoard sorts its sections by the tag's first part and opens the first ones, so the
tags are chosen to put what people open it for first: accuracy/ and loss/ (train and val),
then lr, then pictures/ (filters, feature maps, mistakes), result/ (the final numbers, the
HParams tab's metrics), running_stats/, throughput/, time/, weights/."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from cnn_cli.data import normalize

if TYPE_CHECKING:  # TensorBoard itself is imported when a writer opens: a run that fails its checks never pays it
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)


# Keys that change only how a run is computed or logged, not what it learns: in the HParams
# tab they would be columns holding the same value in every run.
NOT_HPARAMS = {"optimizer._partial_", "optimizer.foreach", "optimizer.fused", "optimizer.differentiable",
               "optimizer.capturable", "scheduler._partial_", "scheduler.last_epoch", "trainer.progress",
               "trainer.log_every_n_steps", "trainer.log_histograms", "trainer.pictures_every_n_epochs",
               "trainer.profile_steps", "trainer.keep_run_folder"}


# TensorBoard's Custom Scalars page: train and val on one chart each, the schedule per step
CHARTS = {"curves": {
    "loss (train, val)": ["Multiline", ["loss/train", "loss/val"]],
    "accuracy (train, val)": ["Multiline", ["accuracy/train", "accuracy/val"]],
    "training loss per step": ["Multiline", ["loss/train_step"]],
    "learning rate per step": ["Multiline", ["lr"]],
}}


def open_writer(folder: Path, purge_step: int | None) -> SummaryWriter:
    """TensorBoard's writer. Its events are written by a background thread; when that write
    fails (a full disk) the thread's traceback is not printed: the writer raises the same
    error in the training thread at its next call, where the run reports it as one line."""
    from torch.utils.tensorboard import SummaryWriter

    if not getattr(threading.excepthook, "quiet_tensorboard", False):
        threading.excepthook = _quiet_tensorboard(threading.excepthook)
    return SummaryWriter(str(folder), purge_step=purge_step)


def _quiet_tensorboard(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(args: Any) -> None:
        if not type(args.thread).__module__.startswith("tensorboard."):
            previous(args)
    hook.quiet_tensorboard = True
    return hook


def flat_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The chosen hyperparameters (of a recorded config) as flat key -> scalar, for the HParams tab."""
    chosen = {"model": config["model"]["name"], "dataset": config["dataset"]["name"], "seed": config["seed"]}
    if "norm" in config["model"]:  # experiment=compare_norms: the one thing that differs
        chosen["model.norm"] = str(config["model"]["norm"])
    for group in ("optimizer", "scheduler", "trainer"):
        for key, value in config[group].items():
            if f"{group}.{key}" in NOT_HPARAMS:
                continue
            name = group if key == "name" else f"{group}.{key}"  # the class: optimizer: SGD
            chosen[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return chosen


def start_session(writer: SummaryWriter, hparams: dict[str, Any]) -> None:
    """The run's hparams, in its own event file (SummaryWriter.add_hparams would open a
    sub-run, which splits one run in two in TensorBoard's run list). No experiment summary:
    TensorBoard then builds the HParams table from every run of a sweep, the hyperparameters
    that differ between them first, and shows those."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    _, session_start, _ = hparams_summary(hparams, {})
    writer.file_writer.add_summary(session_start)


def end_session(writer: SummaryWriter, metrics: dict[str, float], step: int, failed: bool = False) -> None:
    """The final metrics, and the run's status: a failed job shows as failed in the HParams tab."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    _, _, session_end = hparams_summary({}, {})
    if failed:
        plugin_data = session_end.value[0].metadata.plugin_data
        content = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
        content.session_end_info.status = api_pb2.STATUS_FAILURE
        plugin_data.content = content.SerializeToString()
    writer.file_writer.add_summary(session_end)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)


Picture = tuple[str, Tensor]  # a tag and a C x H x W image


def add_picture(writer: SummaryWriter, draw: Callable[[], Picture | list[Picture] | None], step: int) -> None:
    """Log the picture (or pictures) `draw` makes; None: nothing to show. A picture is
    never worth a failed run: one that cannot be drawn is one warning."""
    try:
        pictures = draw()
        for picture in pictures if isinstance(pictures, list) else [pictures] * (pictures is not None):
            writer.add_image(*picture, step)
    except Exception as err:  # noqa: BLE001  whatever drawing trips on
        name = getattr(draw, "func", draw).__name__
        if name not in _warned:
            _warned.add(name)
            log.warning("TensorBoard: could not draw %s (%s: %s); the run goes on without it", name,
                        type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "")


_warned: set[str] = set()  # pictures already warned about: one warning each, not one per epoch


def first_conv_filters(model: nn.Module) -> tuple[str, Tensor] | None:
    """The first conv layer's filters as one grid image, each filter on its own 0..1 scale.
    conv2d: each filter's first input channel (RGB for 3 channels); conv1d: each filter as
    a strip, input channels down, taps across; conv3d: the middle depth slice of each filter."""
    conv = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
    if conv is None:
        return None
    weight = conv.weight.detach().float().cpu()
    tag = "pictures/filters_first_conv"
    if weight.dim() == 3:  # (out, in, taps) -> one grey in x taps image per filter
        weight, tag = weight[:, None], "pictures/filters_first_conv1d_in_channels_x_taps"
    elif weight.dim() == 5:  # (out, in, depth, h, w) -> its middle depth slice
        weight, tag = weight[:, :, weight.shape[2] // 2], "pictures/filters_first_conv3d_middle_depth_slice"
    if weight.shape[1] != 3:  # grey (or many-channel) input: show the first input channel
        weight = weight[:, :1]
    weight = F.interpolate(weight, scale_factor=max(1, 48 // weight.shape[-1]), mode="nearest")
    low = weight.amin(dim=(1, 2, 3), keepdim=True)
    high = weight.amax(dim=(1, 2, 3), keepdim=True)
    weight = (weight - low) / (high - low).clamp_min(1e-8)  # each filter on its own 0..1 scale
    return tag, tile_grid(weight, nrow=int(np.ceil(np.sqrt(len(weight)))), pad_value=1.0)


def feature_maps(model: nn.Module, samples: Tensor) -> list[Picture]:
    """What every conv layer sees: its output for each of the samples (one forward pass), under
    pictures/features_<layer>; each sample's channels as tiles of a grid, each tile on its own
    0..1 scale, the samples' grids side by side. 1-D maps: a heat map, each channel a band of
    rows on its own scale, positions across, drawn at least ~256 x 512; 3-D maps: the middle
    depth slice."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, _ConvNd)}
    outputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _in, out, name=name: outputs.__setitem__(name, out.detach()))
             for name, m in convs.items()]
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()(samples)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    pictures = []
    for name, maps in outputs.items():
        maps = maps.float().cpu()
        if maps.dim() == 5:  # (N, C, D, H, W): its middle depth slice
            maps = maps[:, :, maps.shape[2] // 2]
        grids = [_heat_map(sample) if sample.dim() == 2 else _channel_grid(sample) for sample in maps]
        height = max(grid.shape[1] for grid in grids)
        grids = [F.pad(grid, (0, 4, 0, height - grid.shape[1]), value=1.0) for grid in grids]
        pictures.append((f"pictures/features_{name}", torch.cat(grids, dim=2)))
    return pictures


def _heat_map(maps: Tensor) -> Tensor:
    """C x L maps -> one grey image: each channel a band of rows on its own 0..1 scale, the
    positions across, scaled up to about 256 x 512 pixels so that a short signal is readable."""
    low = maps.amin(dim=1, keepdim=True)
    high = maps.amax(dim=1, keepdim=True)
    maps = (maps - low) / (high - low).clamp_min(1e-8)
    channels, length = maps.shape
    size = (channels * max(1, 256 // channels), length * max(1, 512 // length))
    return F.interpolate(maps[None, None], size=size, mode="nearest")[0]


def _channel_grid(maps: Tensor) -> Tensor:
    """C x H x W maps -> one grey grid image, each map on its own 0..1 scale, at least ~24 pixels tall."""
    maps = maps[:, None]
    maps = F.interpolate(maps, scale_factor=-(-24 // maps.shape[-2]), mode="nearest")
    low = maps.amin(dim=(1, 2, 3), keepdim=True)
    high = maps.amax(dim=(1, 2, 3), keepdim=True)
    maps = (maps - low) / (high - low).clamp_min(1e-8)
    return tile_grid(maps, nrow=int(np.ceil(np.sqrt(len(maps)))), pad_value=1.0)


def mistakes_grid(samples: Tensor, predicted: Tensor, true: Tensor, classes: Sequence[str], mean: Tensor,
                  std: Tensor, limit: int = 8) -> tuple[str, Tensor] | None:
    """Up to `limit` misclassified test samples, 4 a row, each captioned with the full class
    names ('pred: <predicted>' over 'true: <true>', wrapped when long), small enough as a
    whole that TensorBoard's default card (about 370 x 210 pixels) shows the captions
    readably: images as they are, 1-D signals as line plots
    (one colour per channel, normalised), 3-D volumes as their middle depth slice."""
    wrong = (predicted != true).nonzero().flatten()[:limit].tolist()
    if not wrong:
        return None
    rank = samples.dim() - 1
    tag = {2: "misclassified_signals", 3: "misclassified", 4: "misclassified_middle_depth_slice"}[rank]
    mean, std = mean.cpu(), std.cpu()
    pictures, captions = [], []
    for i in wrong:
        sample = samples[i].cpu()
        if rank == 2:
            pictures.append(_plot_signal(normalize(sample[None], mean, std)[0]))
        else:
            pictures.append(_image(sample[:, sample.shape[1] // 2] if rank == 4 else sample))
        captions.append(f"pred: {classes[predicted[i]]}\ntrue: {classes[true[i]]}")
    font = ImageFont.load_default(size=_CAPTION_PX)
    width = max(picture.width for picture in pictures)
    texts = [_wrap(caption, font, width) for caption in captions]
    text_height = max(len(text.splitlines()) for text in texts) * (_CAPTION_PX + 3) + 4
    tiles = []
    for picture, text in zip(pictures, texts):
        tile = Image.new("RGB", (width, picture.height + text_height), "white")
        tile.paste(picture, ((width - picture.width) // 2, 0))
        ImageDraw.Draw(tile).multiline_text((3, picture.height + 2), text, fill="red", font=font, spacing=3)
        tiles.append(torch.from_numpy(np.array(tile)).permute(2, 0, 1))
    return f"pictures/{tag}", tile_grid(torch.stack(tiles), nrow=4, pad_value=128)


_CAPTION_PX = 13  # about 10 pixels when TensorBoard fits the 4 x 2 grid to its card


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """Each line of `text` broken, at any character, into lines that fit `width` pixels."""
    lines = []
    for line in text.splitlines():
        while font.getlength(line) > width - 6 and len(line) > 1:
            cut = 1
            while font.getlength(line[:cut + 1]) <= width - 6:
                cut += 1
            lines.append(line[:cut])
            line = "  " + line[cut:]
        lines.append(line)
    return "\n".join(lines)


def _image(image: Tensor) -> Image.Image:
    """C x H x W -> an RGB picture about 96 pixels across: uint8 pixels as they are, other
    values scaled to 0..255; 3 channels as colour, else the first channel in grey."""
    image = image if image.shape[0] == 3 else image[:1].expand(3, -1, -1)
    if image.dtype != torch.uint8:
        low, high = image.min(), image.max()
        image = ((image.float() - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8)
    scale = max(1, 96 // max(image.shape[1:]))
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _plot_signal(signal: Tensor, width: int = 128, height: int = 72) -> Image.Image:
    """C x L (normalised) -> a line plot, one colour per channel, on one shared vertical scale."""
    values = signal.float()
    low, high = values.min().item(), values.max().item()
    span = max(high - low, 1e-8)
    steps = values.shape[1]
    xs = [round(j * (width - 1) / max(steps - 1, 1)) for j in range(steps)]
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    for c, row in enumerate(values.tolist()):
        ys = [round((high - v) / span * (height - 1)) for v in row]
        draw.line(list(zip(xs, ys)), fill=_COLOURS[c % len(_COLOURS)], width=1)
    return picture


def tile_grid(tiles: Tensor, nrow: int, pad_value: float, padding: int = 2) -> Tensor:
    """N x C x H x W tiles -> one C x H' x W' image, `nrow` tiles a row, as
    torchvision.utils.make_grid lays them out (written here: importing torchvision would
    slow every start)."""
    n, c, h, w = tiles.shape
    rows = -(-n // nrow)
    cols = min(n, nrow)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = tile
    return grid


def write_histograms(writer: SummaryWriter, model: nn.Module, step: int) -> None:
    for name, param in model.named_parameters():
        writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
    for name, buffer in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            writer.add_histogram(f"running_stats/{name}", buffer.detach().float().cpu(), step)
