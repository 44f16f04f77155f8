#!/usr/bin/env bash
# The speed benchmarks on one CUDA GPU, in one go (a few minutes): speed.py's (a) cnn-train,
# (b) plain loop and (c) examples/mnist DataLoader on full MNIST, then throughput.py's
# resnet20 and vgg11_bn on random 32x32 images, float32 / bf16, without / with channels_last.
#
# A GPU machine with no network (the device tool's) has torch, torchvision, tensorboard and
# tqdm but not hydra-core / omegaconf: carry them as wheels, with MNIST's four .gz files.
#   here:   bash benchmarks/gpu.sh prepare      (fills the git-ignored benchmarks/wheels and data/MNIST/raw)
#   there:  bash benchmarks/gpu.sh              (carry benchmarks/wheels and data along)
# Anywhere, to try the whole script in a minute: DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
ROOT=${ROOT:-data}
WHEELS=benchmarks/wheels

if [ "${1:-}" = prepare ]; then
  "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: -d "$WHEELS" hydra-core==1.3.2 omegaconf==2.3.0
  "$PYTHON" -m pip wheel --quiet --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3  # an sdist on PyPI
  mkdir -p "$ROOT/MNIST/raw"
  cp "${MNIST_GZ:-../shared/data/MNIST/raw}"/*.gz "$ROOT/MNIST/raw/"
  du -sh "$WHEELS" "$ROOT/MNIST/raw"
  exit
fi

if ! "$PYTHON" -c "import hydra, cnn_cli.configs" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-build-isolation -e .
fi
for gz in "$ROOT"/MNIST/raw/*.gz; do
  [ -e "${gz%.gz}" ] || gunzip -k "$gz"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__,
              torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA GPU)")'

quick_speed=() quick_models=()
if [ -n "${QUICK:-}" ]; then
  quick_speed=(--epochs 2 --batches 5) quick_models=(--epochs 2 --batches 2 --batch-size 16 --models resnet20 --precisions 32)
fi
"$PYTHON" benchmarks/speed.py --root "$ROOT" --device "$DEVICE" "${quick_speed[@]}"
echo
"$PYTHON" benchmarks/throughput.py --device "$DEVICE" "${quick_models[@]}"
