#!/usr/bin/env bash
# Resume the learned codec's training on a CUDA machine for a fixed time, from the compact pack.
#
# Prepare here (CPU):   python -m latentcomm.train --objective codec --pack runs/pack.npz
# Then run on the GPU machine with runs/pack.npz and runs/codec/ carried along:
#   MINUTES=9 bash tools/train_codec_gpu.sh
# It resumes runs/codec/last.pt (or starts fresh), trains bf16 on CUDA with larger batches of
# 256x256 crops, and leaves the new checkpoint and EMA export under $OUT (or runs/codec-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-runs/codec-gpu}"
mkdir -p "$OUT_DIR/run"
if [ -f runs/codec/last.pt ]; then cp runs/codec/last.pt "$OUT_DIR/run/last.pt"; fi
python3 -m pip install --quiet -r requirements.txt 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 -m latentcomm.train --objective codec \
  --data-pack runs/pack.npz --device "${DEVICE:-cuda}" --precision bf16 \
  --batch "${BATCH:-16}" --crop "${CROP:-256}" --lr "${LR:-1e-4}" \
  --minutes "${MINUTES:-9}" --eval-every 2000 --ckpt-every 500 \
  --run-dir "$OUT_DIR/run" --export "$OUT_DIR/export"
