#!/usr/bin/env bash
# The speed benchmarks on one CUDA GPU, in one go (a few minutes): speed.py's (a) cnn-train,
# (b) plain loop and (c) examples/mnist DataLoader on full MNIST, then throughput.py's
# resnet20 and vgg11_bn on random 32x32 images, float32 / bf16, without / with channels_last.
#
# A GPU machine with no network (the device tool's) has torch, torchvision, tensorboard and
# tqdm but not hydra-core / omegaconf: carry them as wheels, with this checkout's own wheel
# and MNIST's four .gz files (12 MB in all).
#   here:   bash benchmarks/gpu.sh prepare      (fills the git-ignored benchmarks/carry)
#   there:  bash benchmarks/gpu.sh              (carry benchmarks/carry along)
# ROOT=DIR uses MNIST already unpacked in DIR/MNIST/raw instead of the carried files.
# Anywhere, to try the whole script in a minute or two: DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh
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

quick_speed=() quick_models=()
if [ -n "${QUICK:-}" ]; then
  quick_speed=(--epochs 2 --batches 5 --repeats 1) quick_models=(--epochs 2 --batches 2 --batch-size 16 --models resnet20 --precisions 32)
fi
"$PYTHON" benchmarks/speed.py --root "$ROOT" --device "$DEVICE" "${quick_speed[@]}"
echo
"$PYTHON" benchmarks/throughput.py --device "$DEVICE" "${quick_models[@]}"
