#!/usr/bin/env bash
# The `small` preset (about 100M parameters) of ar, then masked diffusion adapted from it as the shipped
# mdlm-tiny was (Dream's shift, DiffuLLaMA's causal-to-bidirectional attention annealing), on one GPU.
#
#   bash scripts/gpu_small_ar_mdlm.sh                      # Shakespeare, the default schedule below
#   CORPUS=my_text STEPS_AR=8000 STEPS_MDLM=8000 bash scripts/gpu_small_ar_mdlm.sh
#   DEVICE=cpu PRECISION=fp32 PRESET=tiny STEPS_AR=4 STEPS_MDLM=4 BATCH="--batch-size 4 --grad-accum 1" \
#       EVAL="--max-windows 4" bash scripts/gpu_small_ar_mdlm.sh       # a smoke test of the script on a CPU
#
# Both runs are resumable: run the script again after a kill and each continues from its last save. While they
# train, the exported model (half precision), tokenizer, config and train_log.jsonl of each run are copied to
# DEST every minute and once more on exit, so a session cut short still leaves its latest checkpoints behind
# (DEST defaults to $OUT, the device tool's folder, else checkpoints/). Then both are evaluated on the test split.
# See docs/training-at-scale.md for the preset and the recipe behind these settings.
set -euo pipefail
DEST=${DEST:-${OUT:-checkpoints}}
RUNS=${RUNS:-runs}
STEPS_AR=${STEPS_AR:-3000}
STEPS_MDLM=${STEPS_MDLM:-3000}
CORPUS_FLAG=${CORPUS:+--corpus $CORPUS}
SEQ=${SEQ:-$([ "${PRESET:-small}" = small ] && echo 1024 || echo 128)}
COMMON="--preset ${PRESET:-small} --seq-len $SEQ --device ${DEVICE:-cuda} --precision ${PRECISION:-bf16}
        ${BATCH:---batch-size 256 --grad-accum 8} --warmup 200 --save-every 250 --eval-every 250 $CORPUS_FLAG"
export PYTHONUNBUFFERED=1
mkdir -p "$RUNS"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

copy_out() {
  for run in ar-small mdlm-small; do
    if [ -f "$RUNS/$run/config.json" ]; then
      mkdir -p "$DEST/$run"
      cp "$RUNS/$run"/{config.json,model.safetensors,tokenizer.json,train_log.jsonl} "$DEST/$run/" 2>/dev/null || true
    fi
  done
}
(while sleep 60; do copy_out; done) &
SYNC=$!
trap 'pkill -P $SYNC 2>/dev/null; kill $SYNC 2>/dev/null; copy_out' EXIT

resume_flag() { [ -f "$1/train_state/state.json" ] && echo --resume || true; }

python -m explorer train --family ar $COMMON --lr 6e-4 --steps "$STEPS_AR" \
    --out "$RUNS/ar-small" $(resume_flag "$RUNS/ar-small") 2>&1 | tee -a "$RUNS/ar-small.log" | tail -c 2000
python -m explorer train --family mdlm --init "$RUNS/ar-small" --shift --anneal-steps 500 $COMMON --lr 3e-4 \
    --steps "$STEPS_MDLM" --out "$RUNS/mdlm-small" $(resume_flag "$RUNS/mdlm-small") 2>&1 \
    | tee -a "$RUNS/mdlm-small.log" | tail -c 2000
copy_out
for run in ar-small mdlm-small; do
  python -m explorer eval --checkpoint "$RUNS/$run" $CORPUS_FLAG ${EVAL:-} | tee "$DEST/$run/eval.txt"
done
