#!/usr/bin/env bash
# One device session: compiled-kernel check, FlexAttention check, and the two cdcd-tiny training runs.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
(python3 scripts/check_kernels_cuda.py > $OUT/kernels_cuda.log 2>&1; python3 scripts/check_flex_cuda.py >> $OUT/kernels_cuda.log 2>&1) &
checks=$!
# throughput probe: both runs at once, as they will run
for v in time-warping no-time-warping; do
  python3 -m explorer train --family cdcd --device cuda --out /tmp/probe-$v --steps 80 --batch-size 64 \
    --eval-every 1000 --save-every 1000 --$v > /tmp/probe-$v.log 2>&1 &
done
wait $(jobs -p | grep -v "^$checks$")
tail -c 1500 /tmp/probe-time-warping.log
tail -2 /tmp/probe-time-warping/train_log.jsonl
rate=$(python3 -c "
import json; r=[json.loads(l) for l in open('/tmp/probe-time-warping/train_log.jsonl')]
print((r[-1]['step']-r[19]['step'])/(r[-1]['wall_s']-r[19]['wall_s']))") || exit 1
steps=$(python3 -c "print(int($rate * ${TRAIN_SECONDS:-320} * 0.93 // 100 * 100))")
echo "rate $rate steps/s -> $steps steps"
for v in time-warping no-time-warping; do
  name=cdcd-tiny; [ $v = no-time-warping ] && name=cdcd-tiny-nowarp
  python3 -m explorer train --family cdcd --device cuda --out /tmp/$name --steps $steps --batch-size 64 \
    --eval-every $((steps / 20)) --save-every $steps --max-minutes 6.5 --$v > /tmp/$name.log 2>&1 &
done
wait
for name in cdcd-tiny cdcd-tiny-nowarp; do
  tail -c 600 /tmp/$name.log; mkdir -p $OUT/$name
  cp /tmp/$name/model.safetensors /tmp/$name/config.json /tmp/$name/train_log.jsonl $OUT/$name/
done
cat $OUT/kernels_cuda.log
