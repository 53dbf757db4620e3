# One multi-GPU call (issue 3's scaling figure): the same DMD2 recipe under `accelerate launch` on 1 GPU, then on
# all GPUs of the machine (DDP, the same per-GPU batch), each for MINUTES of training; samples/s come from each
# run's metrics.jsonl. Carry .device/wheels and .device/minilm; the tree needs checkpoints/shapes-teacher.
#   PARITY_STEPS=600 bash scripts/device_scaling.sh parity   instead trains the recipe for the same number of steps
#   at the same global batch (128 on 1 GPU, 64 per GPU on 2), then judges both exports with `bench image`: does the
#   2-GPU student reach the 1-GPU student's score (issue 3)? Expect ~3 + 2 minutes of training and ~1 of bench.
source scripts/device_env.sh
export PYTHONPATH=.
MINUTES=${MINUTES:-1.0}
GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${1:-}" = parity ]; then
  STEPS=${PARITY_STEPS:-600}
  for n in 1 "$GPUS"; do
    accelerate launch --num_processes "$n" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
      -m trainer train configs/shapes-dmd2.yaml --run_dir=runs/parity-$n --max_steps=$STEPS --max_minutes=8 \
      --batch_size=$((128 / n)) --log_every=50 --eval_every=100000 --export.id=parity-$n-gpu \
      --export.output_dir=runs/exports/parity-$n-gpu > $OUT/parity-$n.log 2>&1
    echo "processes $n exit $?"
    cp runs/parity-$n/metrics.jsonl $OUT/parity-$n-metrics.jsonl
    grep -E "^step|time budget" $OUT/parity-$n.log | tail -2
  done
  python -m bench image --models parity-1-gpu,parity-$GPUS-gpu --checkpoints runs/exports --student-steps 1,2,4 \
    --prompts 560 --out $OUT/bench 2>&1 | grep -v "kept in float32" | tail -12
  exit 0
fi
for n in 1 "$GPUS"; do
  accelerate launch --num_processes "$n" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m trainer train configs/shapes-dmd2.yaml --run_dir=runs/scale-$n --max_minutes=$MINUTES --log_every=25 \
    --eval_prompts=16 --export.output_dir=runs/scale-$n/model > $OUT/scale-$n.log 2>&1
  echo "processes $n exit $?"
  cp runs/scale-$n/metrics.jsonl $OUT/scale-$n-metrics.jsonl
  grep -E "^step|time budget|eval at" $OUT/scale-$n.log | tail -4
done
