# One multi-GPU call (issue 3's scaling figure): the same DMD2 recipe under `accelerate launch` on 1 GPU, then on
# all GPUs of the machine (DDP, the same per-GPU batch), each for MINUTES of training; samples/s come from each
# run's metrics.jsonl. Carry .device/wheels and .device/minilm; the tree needs checkpoints/shapes-teacher.
source scripts/device_env.sh
export PYTHONPATH=.
MINUTES=${MINUTES:-1.0}
GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name --format=csv,noheader
for n in 1 "$GPUS"; do
  accelerate launch --num_processes "$n" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m trainer train configs/shapes-dmd2.yaml --run_dir=runs/scale-$n --max_minutes=$MINUTES --log_every=25 \
    --eval_prompts=16 --export.output_dir=runs/scale-$n/model > $OUT/scale-$n.log 2>&1
  echo "processes $n exit $?"
  cp runs/scale-$n/metrics.jsonl $OUT/scale-$n-metrics.jsonl
  grep -E "^step|time budget|eval at" $OUT/scale-$n.log | tail -4
done
