# Train one teacher stage on the lent GPU in a single call, judge it on 560 held-out prompts and
# return the exported checkpoint (split in 15 MB parts), its metrics and samples under $OUT.
# Usage: bash scripts/device_teacher.sh CONFIG [extra trainer overrides]
source scripts/device_env.sh
export PYTHONPATH=.
CONFIG=$1
shift
RUN_DIR=$(python -c "from trainer.config import load_config; print(load_config('$CONFIG').run_dir)")
python -m trainer train "$CONFIG" --export.output_dir=runs/teacher-export "$@" 2>&1 | grep -v "kept in float32" > $OUT/train.log
tail -25 $OUT/train.log
timeout 150 python scripts/judge_checkpoint.py runs/teacher-export --n 560 --steps 25 --guidance 1.5 --json $OUT/judge.json
cp "$RUN_DIR"/samples/latest.png $OUT/samples.png
cp "$RUN_DIR"/metrics.jsonl $OUT/
tar cf - -C runs teacher-export | split -b 15000000 - $OUT/teacher.tar.
