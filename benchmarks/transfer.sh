#!/usr/bin/env bash
# Does fine-tuning beat training from scratch on a small real set? (docs/transfer.md)
# Pretrain resnet18 on 5 CIFAR-10 classes (2,000 training images each, 32x32), then train on 50
# images per class of the other 5 with experiment=finetune's recipe, from those weights
# (init_from=, a new head) and from random weights, 3 seeds each; both are tested on all 800
# test images of each of those 5 classes. Image-folder trees of symlinks go into $WORK.
#   bash benchmarks/transfer.sh          (CIFAR=~/data/cifar10: train/<class>/*.png, test/<class>/*.png)
# PRE_IMAGES, FEW_IMAGES (per class), PRE_EPOCHS, SEEDS and EXTRA (overrides for every run) make it smaller.
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${CIFAR:-$HOME/data/cifar10}
WORK=${WORK:-/tmp/cnn-transfer}
TRAIN=${TRAIN:-$PWD/.venv/bin/cnn-train}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# what docs/transfer.md's numbers were measured with: shift by up to 4 pixels and flip (not the
# experiment's resized crop and colour jitter, which came after)
PRE_IMAGES=${PRE_IMAGES:-2000}; FEW_IMAGES=${FEW_IMAGES:-50}; PRE_EPOCHS=${PRE_EPOCHS:-4}; EXTRA=${EXTRA:-}; SEEDS=${SEEDS:-0 1 2}
AUGMENT=${AUGMENT:-"dataset.augment.crop_padding=4 dataset.augment.resized_crop_scale=null dataset.augment.brightness=0 \
dataset.augment.contrast=0 dataset.augment.saturation=0"}

tree() {  # tree DEST "CLASSES" TRAIN_PER_CLASS TEST_PER_CLASS
  for c in $2; do
    for split in train test; do
      mkdir -p "$1/$split/$c"
      n=$([ $split = train ] && echo "$3" || echo "$4")
      ls "$CIFAR/$split/$c" | head -n "$n" | while read -r f; do ln -sf "$CIFAR/$split/$c/$f" "$1/$split/$c/$f"; done
    done
  done
}
[ -d "$WORK/pre" ] || tree "$WORK/pre" "airplane automobile bird cat deer" "$PRE_IMAGES" 500
[ -d "$WORK/few" ] || tree "$WORK/few" "dog frog horse ship truck" "$FEW_IMAGES" 100000

[ -f "$WORK/runs/pre/checkpoints/best.pt" ] || "$TRAIN" model=resnet18 dataset=imagefolder \
  dataset.root="$WORK/pre" dataset.augment.crop_padding=4 dataset.augment.flip=true optimizer=adamw optimizer.lr=2e-3 \
  scheduler.warmup_epochs=1 trainer.epochs="$PRE_EPOCHS" trainer.batch_size=128 trainer.progress=false $EXTRA \
  hydra.run.dir="$WORK/runs/pre"

for seed in $SEEDS; do
  for start in finetune scratch; do
    from=$([ $start = finetune ] && echo "init_from=$WORK/runs/pre/checkpoints/best.pt" || true)
    [ -f "$WORK/runs/$start-$seed/metrics.json" ] || "$TRAIN" experiment=finetune dataset.root="$WORK/few" \
      dataset.input_shape=[3,32,32] $AUGMENT model.pretrained=null $from seed=$seed \
      trainer.progress=false $EXTRA hydra.run.dir="$WORK/runs/$start-$seed"
  done
done
python3 - "$WORK/runs" $SEEDS <<'PY'
import json, statistics, sys
from pathlib import Path
for start in ("finetune", "scratch"):
    runs = [json.loads((Path(sys.argv[1]) / f"{start}-{seed}" / "metrics.json").read_text()) for seed in sys.argv[2:]]
    acc = [r["test_acc"] for r in runs]
    secs = sum(sum(h["epoch_seconds"] for h in r["history"]) for r in runs) / len(runs)
    print(f"{start:9s} test acc per seed {', '.join(f'{a:.3f}' for a in acc)}  mean {statistics.mean(acc):.3f}  "
          f"min {min(acc):.3f}  ({secs:.0f} s training each)")
PY
