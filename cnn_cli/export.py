"""cnn-export: a checkpoint's model as a file other runtimes load (ONNX, TorchScript,
torch.export), batchnorm folded and normalisation optionally baked in, and every file
loaded back with its own runtime and checked against PyTorch before it is kept."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cnn_cli import anysize, contract, data as data_mod, files, sources, tta as tta_mod
from cnn_cli.errors import UserError, first_line
from cnn_cli.trained import Trained, load_trained
from cnn_cli.fuse import fuse_batchnorm

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the largest logit difference from PyTorch a float32 export may show
VERIFY_IMAGES = 64
INPUT, OUTPUT = "images", "logits"
CONTRACT = "preprocess"  # the metadata key (ONNX) or extra file (TorchScript, .pt2) of the contract


class Deployable(nn.Module):
    """The network a runtime receives: takes `images`, returns `logits`. With preprocess, the
    input is raw samples as the dataset stores them (uint8 pixels N x C x H x W, what a
    camera driver hands over; float32 readings for sensor data), and the dataset's
    normalisation runs inside the graph."""

    def __init__(self, model: nn.Module, trained: Trained, preprocess: bool) -> None:
        super().__init__()
        self.model, self.preprocess = model, preprocess
        self.register_buffer("mean", trained.mean.clone())
        self.register_buffer("std", trained.std.clone())

    def forward(self, images: Tensor) -> Tensor:
        if self.preprocess:
            images = data_mod.normalize(images, self.mean, self.std)
        return self.model(images)


@dataclass
class Format:
    suffix: str  # the default file name: the checkpoint's, with this suffix
    write: Callable[[Deployable, Tensor, dict[str, str], DictConfig, BinaryIO], None]
    load: Callable[[Path], Callable[[Tensor], Tensor]]  # the format's own runtime
    embedded: Callable[[Path], bytes | None]  # the preprocessing contract written into the file


def _batch_dim() -> dict[str, dict[int, Any]]:
    return {INPUT: {0: torch.export.Dim("batch")}}


def _write_onnx(net: Deployable, example: Tensor, meta: dict[str, str], cfg: DictConfig, f: BinaryIO) -> None:
    with _quiet("torch.onnx", "onnxscript"):  # their notes on opset conversion: the outcome is checked below
        program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes=_batch_dim(), opset_version=cfg.opset)
    proto = program.model_proto
    wrote = next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))
    if cfg.opset is not None and wrote != cfg.opset:  # the exporter falls back to its own opset, silently
        raise UserError(f"opset={cfg.opset}: torch's ONNX exporter cannot write it for this model (it wrote opset "
                        f"{wrote}); choose another, or leave opset out")
    meta = {**meta, "opset": str(wrote)}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    f.write(proto.SerializeToString())


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _import_onnxruntime() -> Any:
    """onnxruntime, without its telemetry: as it is imported it writes a device id and a telemetry
    database under $XDG_CACHE_HOME/Microsoft/ (~/.cache/Microsoft/), so the import gets a cache
    folder of its own that is removed at once, and its telemetry events are turned off."""
    if "onnxruntime" not in sys.modules:
        saved = os.environ.get("XDG_CACHE_HOME")
        with tempfile.TemporaryDirectory(prefix="cnn-cli-ort-") as scratch:
            os.environ["XDG_CACHE_HOME"] = scratch
            try:
                import onnxruntime
            finally:
                if saved is None:
                    os.environ.pop("XDG_CACHE_HOME", None)
                else:
                    os.environ["XDG_CACHE_HOME"] = saved
        onnxruntime.disable_telemetry_events()
    return sys.modules["onnxruntime"]


def _load_onnx(path: Path) -> Callable[[Tensor], Tensor]:
    onnxruntime = _import_onnxruntime()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name  # images, or image for any_size=true
    return lambda x: torch.from_numpy(session.run([OUTPUT], {name: x.numpy()})[0])


def _onnx_contract(path: Path) -> bytes | None:
    import onnx

    value = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}.get(CONTRACT)
    return None if value is None else value.encode()


def _write_torchscript(net: Deployable, example: Tensor, meta: dict[str, str], cfg: DictConfig, f: BinaryIO) -> None:
    with _asked_for_torchscript():
        torch.jit.save(torch.jit.trace(net, example), f, _extra_files=meta)


@contextlib.contextmanager
def _asked_for_torchscript() -> Iterator[None]:
    """PyTorch warns at every torch.jit call that TorchScript is deprecated; format=torchscript
    asked for it, and docs/use-a-model.md says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        # the mean and std buffers are constants of the trace, as they should be
        warnings.filterwarnings("ignore", message="torch.as_tensor results are registered",
                                category=torch.jit.TracerWarning)
        yield


def _write_exported(net: Deployable, example: Tensor, meta: dict[str, str], cfg: DictConfig, f: BinaryIO) -> None:
    program = torch.export.export(net, (example,), dynamic_shapes=_batch_dim())
    torch.export.save(program, f, extra_files=meta)


def _load_torchscript(path: Path) -> Callable[[Tensor], Tensor]:
    with _asked_for_torchscript():
        return torch.jit.load(str(path))


def _load_exported(path: Path) -> Callable[[Tensor], Tensor]:
    with open(path, "rb") as f:  # a file object: by name, torch.export.load wants a .pt2 suffix
        return torch.export.load(f).module()


def _torchscript_contract(path: Path) -> bytes | None:
    files = {CONTRACT: ""}
    with _asked_for_torchscript():
        torch.jit.load(str(path), _extra_files=files)
    return files[CONTRACT] or None


def _exported_contract(path: Path) -> bytes | None:
    files = {CONTRACT: ""}
    with open(path, "rb") as f:
        torch.export.load(f, extra_files=files)
    value = files[CONTRACT]
    return (value.encode() if isinstance(value, str) else value) or None


FORMATS = {
    "onnx": Format(".onnx", _write_onnx, _load_onnx, _onnx_contract),
    "torchscript": Format(".torchscript.pt", _write_torchscript, _load_torchscript, _torchscript_contract),
    "exported": Format(".pt2", _write_exported, _load_exported, _exported_contract),
}
# what format=onnx imports: the extra `export` installs them
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")  # onnxruntime first: imported without telemetry


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Export, verify, keep: returns the report it prints."""
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format}: choose one of {', '.join(FORMATS)}")
    if cfg.format == "onnx":
        require_onnx()
    if cfg.opset is not None and cfg.format != "onnx":
        raise UserError(f"opset={cfg.opset} is for format=onnx only; drop it")
    trained = load_trained(cfg.checkpoint)
    fmt = FORMATS[cfg.format]
    out = files.output_file(cfg.output) if cfg.output else trained.path.with_name(trained.path.stem + fmt.suffix)
    if files.is_checkpoint(out):  # the default name beside a checkpoint named like an export
        raise UserError(f"{out} (the default output) is a checkpoint; give another file name with output=FILE")
    model = fuse_batchnorm(trained.model) if cfg.fuse_bn else trained.model
    # then the run's trainer.tta around it: the file scores as cnn-eval and cnn-predict do
    net = Deployable(tta_mod.wrap(model, trained.tta), trained, cfg.preprocess).eval()
    raw, source = verification_samples(trained.config, cfg.root, cfg.verify_inputs)
    feed = (lambda x: x) if cfg.preprocess else trained.normalize
    spec = contract.of(trained.config.dataset)
    if cfg.any_size:
        anysize.check(spec, cfg)
    spec["file"] = {"format": cfg.format, "input": anysize.INPUT if cfg.any_size else INPUT, "output": OUTPUT,
                    "input_dtype": str(feed(raw[:1]).dtype).removeprefix("torch."),
                    "input_layout": "HWC, any H and W, one image" if cfg.any_size else "NCHW",
                    "in_model": anysize.STEPS if cfg.any_size else ["scale", "normalize"] if cfg.preprocess else [],
                    "tta": trained.tta}  # flip: the file's logits are already the mean of each image and its mirror
    meta = {**_metadata(trained, cfg.preprocess, raw.dtype), CONTRACT: json.dumps(spec)}
    if cfg.any_size:
        meta["input"] = f"{anysize.INPUT}: one decoded image, H x W x {spec['input_shape'][0]} uint8 of any H and W"
    load = (lambda path: anysize.per_image(fmt.load(path))) if cfg.any_size else fmt.load
    report: dict[str, Any] = {}

    def verify(path: Path) -> None:  # on the written file, before it takes the final name
        report.update(_verify(load, path, trained, raw, feed, cfg.format))
        if cfg.any_size:  # one image at a time, verified at the model's size, which the in-graph resize keeps
            report.update(input_spec=anysize.SPEC, output_spec=f"{OUTPUT} (1 x {len(spec['classes'])}, float32)")

    def write(f: BinaryIO) -> None:
        try:
            if cfg.any_size:
                _write_any_size(net, feed(raw[:2]), meta, cfg, spec, f)
            else:
                fmt.write(net, feed(raw[:2]), meta, cfg, f)
        except (UserError, OSError):
            raise
        except Exception as err:  # each exporter raises its own kinds; HYDRA_FULL_ERROR=1 shows the traceback
            raise UserError(f"format={cfg.format}: the exporter failed on model '{trained.config.model.name}' "
                            f"({first_line(err)[:200]}); nothing was written") from err

    files.write_file(out, write, check=verify)
    side = contract.sidecar(out)
    try:
        files.write_text(side, json.dumps(spec, indent=2) + "\n")
    except UserError:
        out.unlink(missing_ok=True)  # a model without its contract is not kept
        raise
    report.update({"output": str(out), "contract": str(side), "format": cfg.format, "bytes": out.stat().st_size,
                   "verified_on": source + " at the model's size (kept as it is by the resize)" * cfg.any_size,
                   "fuse_bn": cfg.fuse_bn, "preprocess": cfg.preprocess, "tta": trained.tta,
                   "contract_line": contract.describe(spec)})
    return report


def _write_any_size(net: Deployable, example: Tensor, meta: dict[str, str], cfg: DictConfig, spec: dict[str, Any],
                    f: BinaryIO) -> None:
    """The model as preprocess=true writes it, with the resize in front (cnn_cli/anysize.py)."""
    if cfg.format == "onnx":
        import onnx

        plain = io.BytesIO()
        _write_onnx(net, example, meta, cfg, plain)
        f.write(anysize.prepend(onnx.load_from_string(plain.getvalue()), spec).SerializeToString())
    else:
        with _asked_for_torchscript():
            resized = torch.jit.script(anysize.Resized(torch.jit.trace(net, example), spec))
            torch.jit.save(resized, f, _extra_files=meta)


def require_onnx() -> None:
    for name in ONNX_MODULES:
        try:
            _import_onnxruntime() if name == "onnxruntime" else __import__(name)
        except ImportError as err:
            raise UserError(f"format=onnx needs the optional extra 'export' ({err.name or name} is missing): "
                            "pip install 'cnn-cli[export]'") from None


def _metadata(trained: Trained, preprocess: bool, raw: torch.dtype) -> dict[str, str]:
    """Stored in the file, so a runtime knows the class names and what input to give."""
    dataset = trained.config.dataset
    shape = "N x " + " x ".join(str(s) for s in dataset.input_shape)
    scaled = "pixel / 255" if raw == torch.uint8 else "reading"
    return {"classes": json.dumps(list(dataset.classes)), "dataset": str(dataset.name),
            "model": str(trained.config.model.name),
            "input": f"{shape} {'uint8 raw pixels' if raw == torch.uint8 else 'float32 raw readings'}" if preprocess
                     else f"{shape} float32, normalised: ({scaled} - mean) / std",
            "mean": json.dumps(trained.mean.tolist()), "std": json.dumps(trained.std.tolist()),
            "tta": f"{trained.tta}: the logits are already the mean of each image's and its mirror image's"
                   if trained.tta else "none"}


def _verify(load: Callable[[Path], Callable[[Tensor], Tensor]], path: Path, trained: Trained, raw: Tensor,
            feed: Callable[[Tensor], Tensor], name: str) -> dict[str, Any]:
    """Run the written file with its own runtime on one sample and on the whole batch (a
    dynamic batch axis), against the checkpoint's PyTorch model as trained (batchnorm not folded) and
    as its run scored (trainer.tta)."""
    try:
        run = load(path)
    except Exception as err:  # each runtime raises its own kinds
        raise UserError(f"the {name} file just written does not load with its own runtime "
                        f"({first_line(err)[:200]}); nothing was kept") from None
    worst, agree = 0.0, 0
    with torch.inference_mode():
        expected = trained.scoring()(trained.normalize(raw))
        if not expected.isfinite().all():  # then every comparison below would pass or fail by accident
            raise UserError(f"the checkpoint's model gives non-finite logits (NaN or inf) on {len(raw)} verification "
                            "samples: its weights or its dataset.mean/std are damaged; nothing was kept. Export a "
                            "checkpoint that cnn-eval scores")
        for part in (raw[:1], raw):
            got = run(feed(part)).float()
            difference = (got - expected[:len(part)]).abs().max().item() if got.isfinite().all() else math.inf
            worst = max(worst, difference)
        agree = int((got.argmax(1) == expected.argmax(1)).sum())
    if not worst < TOLERANCE:
        raise UserError(f"the {name} file differs from the PyTorch model by up to {worst:.2e} in the logits (the "
                        f"limit is {TOLERANCE:.0e}); nothing was kept. Try fuse_bn=false, or another opset")
    return {"max_abs_difference": worst, "same_predictions": f"{agree}/{len(raw)}",
            "input_spec": _spec(INPUT, feed(raw[:1])), "output_spec": _spec(OUTPUT, got)}


def _spec(name: str, example: Tensor) -> str:
    """images (N x 1 x 28 x 28, uint8)"""
    return f"{name} (N x {' x '.join(str(s) for s in example.shape[1:])}, {str(example.dtype).removeprefix('torch.')})"


def verification_samples(train_cfg: DictConfig, root: str | None, inputs: str | None = None) -> tuple[Tensor, str]:
    """Raw test samples (as the dataset stores them) to check an export on, without downloading anything: image
    files in `inputs` (verify_inputs=), prepared as the contract says; else the checkpoint's own dataset if its files
    are in `root` (default data/; an image folder only where root= names it); else the bundled MNIST sample if the
    shape fits, else random pixels of the right shape. Which one is said in the returned text."""
    if inputs is not None:
        return _samples_in(Path(inputs).expanduser(), inputs, train_cfg.dataset)
    # looked for here (as cnn-eval does), never where the checkpoint's author kept it
    dataset = OmegaConf.merge(train_cfg.dataset, {"root": root or "data", "download": False, "fallback": False})
    source = sources.of(dataset)
    if source.own_files and root:
        dataset.cache_dir = None  # an image cache goes in root or the user's cache folder, as for training
        data = data_mod.load(dataset)  # root= names the tree: what is wrong with it is said
        split = next((s for s in (data.test, data.val, data.train) if len(s)))
        images = split.images[:VERIFY_IMAGES]
        which = "test" if split is data.test else "validation" if split is data.val else "training (none held out)"
        return images, f"{len(images)} {which} images of root={root}"
    # random data is drawn below, without its 60,000 images; a user's own files need root=
    if not (source.drawn or source.own_files):
        try:
            images = data_mod.load(dataset).test.images[:VERIFY_IMAGES]
            return images, f"{len(images)} {dataset.name} test images"
        except UserError:
            pass
    shape = tuple(dataset.input_shape)
    hint = source.verify_hint
    if shape == (1, 28, 28) and not source.stores_floats(dataset):
        images = sources.MNIST_SAMPLE.read(dataset, None, "cpu").test[0][:VERIFY_IMAGES]
        return images, f"{len(images)} images of the bundled MNIST sample ({dataset.name} not found){hint}"
    gen = torch.Generator().manual_seed(0)
    if source.stores_floats(dataset):  # readings: the file must take float32, as the dataset stores them
        images = torch.randn((VERIFY_IMAGES, *shape), generator=gen)
    else:
        images = torch.randint(0, 256, (VERIFY_IMAGES, *shape), dtype=torch.uint8, generator=gen)
    missing = "" if source.drawn else f" ({dataset.name} not found){hint}"
    return images, f"{VERIFY_IMAGES} random images{missing}"


def _samples_in(folder: Path, given: str, dataset: DictConfig) -> tuple[Tensor, str]:
    """Up to VERIFY_IMAGES image files of verify_inputs=DIR, decoded and resized by the model's contract."""
    from cnn_cli import images

    if not folder.is_dir():
        raise UserError(f"verify_inputs={given} is not a folder; give a folder of image files to verify the export on")
    spec = contract.of(dataset)
    if spec["color"] is None:
        raise UserError(f"verify_inputs={given}: the model takes {spec['samples']} samples of shape "
                        f"{spec['input_shape']}, which no image file is; leave verify_inputs out")
    shape, resize = contract.decode_shape(spec)
    decoded = []
    for path in images.image_files(folder):
        try:
            decoded.append(images.decode(path, shape, resize))
        except images.Unreadable:
            continue
        if len(decoded) == VERIFY_IMAGES:
            break
    if not decoded:
        raise UserError(f"verify_inputs={given} holds no readable image files ({', '.join(images.EXTENSIONS)})")
    return torch.stack(decoded), f"{len(decoded)} images of verify_inputs={given}"


def describe(report: dict[str, Any]) -> str:
    """The lines cnn-export prints."""
    return "\n".join([
        f"written {report['output']} ({report['format']}, {report['bytes'] / 1e6:.2f} MB; batchnorm "
        f"{'folded' if report['fuse_bn'] else 'kept'}; {'raw' if report['preprocess'] else 'normalised'} input"
        + "; each image averaged with its mirror image, as trainer.tta=flip scored it" * (report["tta"] == "flip")
        + ")",
        f"input {report['input_spec']} -> output {report['output_spec']}",
        f"preprocessing contract {report['contract']}: {report['contract_line']}",
        f"verified with its own runtime on {report['verified_on']}: largest logit difference from PyTorch "
        f"{report['max_abs_difference']:.2e}, same predictions {report['same_predictions']}",
    ])
