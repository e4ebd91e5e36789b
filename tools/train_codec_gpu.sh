#!/usr/bin/env bash
# Continue the learned codec's training on a CUDA machine for a fixed time, from the compact pack.
#
# Prepare here (CPU), into runs/ (ignored, so it travels only when carried):
#   python -m latentcomm.training --objective codec --pack runs/pack.npz        # ~35 MB of training photos
#   python tools/heldout_crops.py runs/gpu-heldout                            # the 6 held-out 512 crops
#   python -m pip install --no-deps --target runs/pydeps pytorch-msssim ssimulacra2  # pure Python; the
#                         # device's torch image lacks them, and the script puts runs/pydeps on PYTHONPATH
# Then run on the GPU machine with runs/pack.npz, runs/gpu-heldout and runs/pydeps carried along:
#   MINUTES=8 bash tools/train_codec_gpu.sh
# It resumes $CKPT (runs/codec/last.pt) when that travelled too, else starts from the shipped weights
# (models/latentcomm-lic) with a fresh optimizer, warmed up. It trains with larger batches of 256x256
# crops, annealing the LR over the last third of the time box, evaluates on the held-out crops, and
# leaves the EMA export, metrics and log under $OUT (or runs/codec-gpu). Every variable below can
# be set from the environment (PACK, HELDOUT, INIT_FROM, CKPT, RUN_DIR, DEVICE, BATCH, CROP, LR, ...);
# CONTEXT_GROUPS=16,16,32,64,64 trains with a context model, jointly (see latentcomm/training/context.py);
# MSSSIM_WEIGHT=0.5 blends an MS-SSIM term into the distortion, S2_WEIGHT=0.3 a SSIMULACRA2 term
# (see latentcomm/training/codec.py). QUALITIES=2-5 trains only those levels; with QUALITIES_SHARE=0.5, half the
# crops take those levels and the rest any level (--qualities, --qualities-share).
# DEVICE=cpu MINUTES=0.2 BATCH=2 tests the script on a CPU, as tests/test_learned_codec.py does.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-runs/codec-gpu}"
RUN_DIR="${RUN_DIR:-/tmp/codec-gpu-run}"
mkdir -p "$OUT_DIR" "$RUN_DIR"
if [ -d runs/pydeps ]; then export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$PWD/runs/pydeps"; fi
INIT=(--init-from "${INIT_FROM:-models/latentcomm-lic}")
if [ -n "${CONTEXT_GROUPS:-}" ]; then INIT+=(--context-groups "$CONTEXT_GROUPS"); fi
if [ -n "${QUALITIES:-}" ]; then INIT+=(--qualities "$QUALITIES" --qualities-share "${QUALITIES_SHARE:-1}"); fi
CKPT="${CKPT:-runs/codec/last.pt}"
if [ -f "$CKPT" ] && [ ! -f "$RUN_DIR/last.pt" ]; then cp "$CKPT" "$RUN_DIR/last.pt"; fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
"${PYTHON:-python3}" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
status=0
PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m latentcomm.training --objective codec \
  --data "${HELDOUT:-runs/gpu-heldout}" --data-pack "${PACK:-runs/pack.npz}" "${INIT[@]}" \
  --device "${DEVICE:-cuda}" --precision "${PRECISION:-fp32}" \
  --batch "${BATCH:-16}" --crop "${CROP:-256}" --lr "${LR:-1e-4}" --warmup "${WARMUP:-300}" \
  --msssim-weight "${MSSSIM_WEIGHT:-0}" --s2-weight "${S2_WEIGHT:-0}" \
  --decay-to "${DECAY_TO:-1e-5}" --decay-frac "${DECAY_FRAC:-0.35}" \
  --minutes "${MINUTES:-8}" --eval-every "${EVAL_EVERY:-1000}" --ckpt-every "${CKPT_EVERY:-1000}" \
  --log-every "${LOG_EVERY:-25}" --run-dir "$RUN_DIR" --export "$OUT_DIR/export" \
  2>"$RUN_DIR/train.raw" || status=$?
# tqdm redraws with carriage returns: keep the log lines and every 200th redraw of the bar.
tr '\r' '\n' <"$RUN_DIR/train.raw" | awk '!/^training codec/ || /held-out|stopped/ || (++n % 200 == 0)' >"$OUT_DIR/train.log" || true
cp "$RUN_DIR/metrics.jsonl" "$OUT_DIR/metrics.jsonl" 2>/dev/null || true
grep -E "held-out|initialised|resumed|parameters|stopped|rror" "$OUT_DIR/train.log" | tail -40 || true
tail -3 "$OUT_DIR/metrics.jsonl" 2>/dev/null || true
exit "$status"
