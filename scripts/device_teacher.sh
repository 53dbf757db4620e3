# Train (or resume) a teacher config on the lent GPU for one call, then judge and return it.
# Usage: bash scripts/device_teacher.sh [config.yaml] [extra trainer overrides]
source scripts/device_env.sh
export PYTHONPATH=.
CONFIG=${1:-configs/shapes-teacher.yaml}
shift || true
RUN_DIR=$(python -c "from trainer.config import load_config; print(load_config('$CONFIG').run_dir)")
python -m trainer train "$CONFIG" --export.output_dir=runs/teacher-export "$@" 2>&1 | grep -v "kept in float32" | tail -25
timeout 90 python scripts/judge_checkpoint.py runs/teacher-export --n 210 --steps 25 --guidance 1.5 3 --json $OUT/judge.json
cp "$RUN_DIR"/samples/latest.png $OUT/samples.png
cp "$RUN_DIR"/metrics.jsonl $OUT/
tar cf - -C runs teacher-export | split -b 15000000 - $OUT/teacher.tar.
