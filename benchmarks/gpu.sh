#!/usr/bin/env bash
# cnn-cli on one CUDA GPU, in one go (about 5 minutes), each part on its own so that one
# failure does not hide the rest:
#   checks    the features on CUDA: lenet5_bn on full MNIST, then cnn-eval fuse_bn, cnn-export
#             (onnx, torchscript), cnn-predict on PNGs and on the .onnx; precision=16 with SGD and
#             AdamW (the gradient scaler with foreach and fused kernels); resnet18 with
#             photo augmentation, EMA and bf16 on random 64x64 images, and a transfer from it
#   speedrun  experiment=mnist_speedrun on the GPU, seeds 0-4 (accuracy, training seconds), and
#             benchmarks/speedrun.py against the plain script on the GPU, interleaved
#   speed     speed.py's (a) cnn-train and (b) plain loop, LeNet-5 on full MNIST
#   throughput (FULL=1 only) throughput.py's resnet20 and vgg11_bn, float32 / bf16, +- channels_last
#
# A GPU machine with no network (the device tool's) has torch, torchvision, tensorboard and
# tqdm but not hydra-core / omegaconf: carry them as wheels, with this checkout's own wheel
# and MNIST's four .gz files (12 MB in all).
#   here:   bash benchmarks/gpu.sh prepare      (fills the git-ignored benchmarks/carry)
#   there:  bash benchmarks/gpu.sh              (carry benchmarks/carry along)
# ROOT=DIR uses MNIST already unpacked in DIR/MNIST/raw instead of the carried files.
# Anywhere, to try the whole script in a few minutes: DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
CARRY=benchmarks/carry

if [ "${1:-}" = prepare ]; then
  rm -rf "$CARRY"
  mkdir -p "$CARRY/mnist"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: -d "$CARRY/wheels" hydra-core==1.3.2 omegaconf==2.3.0
  "$PYTHON" -m pip wheel --quiet --no-deps -w "$CARRY/wheels" antlr4-python3-runtime==4.9.3  # an sdist on PyPI
  "$PYTHON" -m pip wheel --quiet --no-deps -w "$CARRY/wheels" .  # cnn-cli as this checkout is now
  cp "${MNIST_GZ:-../shared/data/MNIST/raw}"/*.gz "$CARRY/mnist/"
  du -sh "$CARRY"
  exit
fi

if ! "$PYTHON" -c "import hydra, cnn_cli.configs" 2>/dev/null; then  # not installed: use the carried wheels
  site=/tmp/cnn-cli-site
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" "$CARRY"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
fi
export PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"  # its cnn-train
if [ -z "${ROOT:-}" ]; then  # unpack the carried MNIST outside the checkout
  ROOT=${TMPDIR:-/tmp}/cnn-cli-data
  mkdir -p "$ROOT/MNIST/raw"
  for gz in "$CARRY"/mnist/*.gz; do
    raw="$ROOT/MNIST/raw/$(basename "$gz" .gz)"
    [ -e "$raw" ] || gunzip -c "$gz" > "$raw"
  done
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__,
              torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA GPU)")'

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cnn-gpu-XXXXXX")
failed=()
part() {  # part NAME COMMAND...: run one part, note a failure, go on
  echo; echo "=== $1"
  local name=$1; shift
  if ! "$@"; then failed+=("$name"); echo "=== $name FAILED"; fi
}
quick() { [ -n "${QUICK:-}" ]; }
limit=() test_limit=()
quick && limit=(trainer.limit_train_batches=5) test_limit=(trainer.limit_test_batches=2)

checks() {
  local run=$WORK/lenet5_bn photos=$WORK/photos
  cnn-train model=lenet5_bn dataset.root="$ROOT" trainer.device="$DEVICE" trainer.epochs=1 "${limit[@]}" \
    trainer.progress=false hydra.run.dir="$run" || return
  cnn-eval checkpoint="$run/checkpoints/best.pt" root="$ROOT" device="$DEVICE" fuse_bn=true || return
  cnn-export checkpoint="$run/checkpoints/best.pt" root="$ROOT" format=onnx || return
  cnn-export checkpoint="$run/checkpoints/best.pt" root="$ROOT" format=torchscript || return
  "$PYTHON" - "$ROOT" "$photos" <<'PY' || return
import sys
from pathlib import Path
import numpy as np
from PIL import Image
raw, out = Path(sys.argv[1]) / "MNIST" / "raw" / "t10k-images-idx3-ubyte", Path(sys.argv[2])
out.mkdir()
pixels = np.frombuffer(raw.read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)
for i in range(8):
    Image.fromarray(pixels[i]).save(out / f"{i}.png")
PY
  cnn-predict checkpoint="$run/checkpoints/best.pt" inputs="[$photos]" device="$DEVICE" || return
  cnn-predict checkpoint="$run/checkpoints/best.onnx" inputs="[$photos]" || return
  if [ "$DEVICE" != cpu ]; then  # precision=16 is for CUDA only
    for optimizer in sgd adamw; do
      cnn-train model=lenet5_bn dataset.root="$ROOT" trainer.device="$DEVICE" trainer.precision=16 \
        optimizer=$optimizer trainer.epochs=1 trainer.limit_train_batches=100 trainer.limit_val_batches=2 \
        trainer.progress=false hydra.run.dir="$WORK/fp16_$optimizer" 2>&1 | grep -E "epoch 1/1|test acc|rror" || return
    done
  fi
  local photo=(model=resnet18 dataset=random 'dataset.input_shape=[3,64,64]' 'dataset.num_images=[512,128]'
               dataset.val_size=128 trainer.device="$DEVICE" trainer.progress=false trainer.batch_size=64)
  quick && photo+=('dataset.input_shape=[3,32,32]' 'dataset.num_images=[48,16]' dataset.val_size=16
                   trainer.batch_size=16)  # resnet18 on a CPU: a few small batches
  cnn-train "${photo[@]}" trainer.epochs=2 trainer.precision=bf16 trainer.ema_decay=0.9 dataset.augment.flip=true \
    'dataset.augment.resized_crop_scale=[0.35,1]' dataset.augment.brightness=0.2 dataset.augment.contrast=0.2 \
    hydra.run.dir="$WORK/resnet18" || return
  cnn-train "${photo[@]}" trainer.epochs=1 dataset.num_classes=5 init_from="$WORK/resnet18/checkpoints/best.pt" \
    trainer.pretrained_lr_scale=0.1 hydra.run.dir="$WORK/transfer"
}

speedrun() {
  local seeds=(0 1 2 3 4)
  quick && seeds=() limit=(trainer.limit_train_batches=20)  # speedrun.py below runs both once
  for seed in "${seeds[@]}"; do
    echo "--- seed $seed: cnn-train, then the plain script"
    cnn-train experiment=mnist_speedrun dataset.root="$ROOT" trainer.device="$DEVICE" seed="$seed" "${limit[@]}" \
      trainer.progress=false hydra.run.dir="$WORK/speedrun$seed" 2>&1 | grep -E "epoch 1/1|test acc" || return
    "$PYTHON" benchmarks/mnist_plain.py --root "$ROOT" --device "$DEVICE" --seed "$seed" \
      ${QUICK:+--steps 20} || return
  done
  "$PYTHON" benchmarks/speedrun.py --root "$ROOT" --device "$DEVICE" \
    $(if quick; then echo --rounds 1 --steps 20; else echo --rounds 3; fi)
}

speed() {
  "$PYTHON" benchmarks/speed.py --root "$ROOT" --device "$DEVICE" --only a --only b \
    $(if quick; then echo --epochs 2 --batches 5 --repeats 1; else echo --repeats 2; fi)
}

throughput() {
  "$PYTHON" benchmarks/throughput.py --device "$DEVICE" \
    ${QUICK:+--epochs 2 --batches 2 --batch-size 16 --models resnet20 --precisions 32}
}

ROOT=$(cd "$ROOT" && pwd)
cd "$WORK" && ln -s "$OLDPWD/benchmarks" benchmarks  # run folders land in $WORK, scripts read from the checkout
part checks checks
part speedrun speedrun
part speed speed
[ -n "${FULL:-}" ] && part throughput throughput
echo
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all parts passed"
