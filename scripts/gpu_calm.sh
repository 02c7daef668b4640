#!/usr/bin/env bash
# One device session for CALM: autoencoders for K = 1, 2, 4, 8 side by side, then the four language models.
# The autoencoder phase alone took 2m50s on one H200 (4 processes, about 25 steps/s each): give the call
# at least 9 minutes (LM_SECONDS=240). Results are copied to $OUT as soon as each phase ends.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
LM_SECONDS=${LM_SECONDS:-170}
nvidia-smi --query-gpu=name --format=csv,noheader
for k in 1 2 4 8; do
  latent=64; [ $k = 8 ] && latent=128
  python3 -m explorer train-autoencoder --chunk $k --latent-dim $latent --steps 4000 --batch-size 64 --lr 2e-3 \
    --device cuda --out /tmp/ae/calm-ae-k$k > /tmp/ae-k$k.log 2>&1 &
done
wait
for k in 1 2 4 8; do tail -c 300 /tmp/ae-k$k.log; python3 -c "import json; print($k, json.load(open('/tmp/ae/calm-ae-k$k/config.json'))['metrics'])"; done
tar czf $OUT/calm-autoencoders.tar.gz --exclude='train_state' --exclude='train_state.safetensors' -C /tmp ae  # about 4 MB each, fp32
# throughput probe of the language models, all four at once
for k in 1 2 4 8; do
  python3 -m explorer train --family calm --chunk $k --autoencoder /tmp/ae/calm-ae-k$k --device cuda --batch-size 32 \
    --out /tmp/probe-k$k --steps 60 --eval-every 1000 --save-every 1000 > /tmp/probe-k$k.log 2>&1 &
done
wait
for k in 1 2 4 8; do
  steps=$(python3 -c "
import json; r=[json.loads(l) for l in open('/tmp/probe-k$k/train_log.jsonl')]
print(int((r[-1]['step']-r[19]['step'])/(r[-1]['wall_s']-r[19]['wall_s']) * $LM_SECONDS * 0.9 // 100 * 100))") || { tail -c 1500 /tmp/probe-k$k.log; exit 1; }
  echo "K=$k: $steps steps"
  python3 -m explorer train --family calm --chunk $k --autoencoder /tmp/ae/calm-ae-k$k --device cuda --batch-size 32 \
    --out /tmp/calm/calm-tiny-k$k --steps $steps --eval-every $((steps / 10)) --save-every $steps \
    --max-minutes 3.5 > /tmp/calm-k$k.log 2>&1 &
done
wait
for k in 1 2 4 8; do
  tail -c 400 /tmp/calm-k$k.log
  cp /tmp/calm/calm-tiny-k$k/model.safetensors $OUT/calm-tiny-k$k.safetensors
  rm -rf /tmp/calm/calm-tiny-k$k/train_state /tmp/calm/calm-tiny-k$k/model.safetensors
done
tar czf $OUT/calm-small-files.tar.gz --exclude='*.safetensors' -C /tmp calm ae
ls -la $OUT
