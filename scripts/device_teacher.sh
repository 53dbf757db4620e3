# Train (or resume) the shipped teacher on the lent GPU for one call, then judge and return it.
# Usage: bash scripts/device_teacher.sh [extra trainer overrides]
source scripts/device_env.sh
export PYTHONPATH=.
python -m trainer train configs/shapes-teacher.yaml --export.output_dir=runs/teacher-export "$@" 2>&1 | grep -v "kept in float32" | tail -25
timeout 60 python scripts/judge_checkpoint.py runs/teacher-export --n 210 --steps 25 --guidance 1.5 3 4.5 --json $OUT/judge.json
cp runs/shapes-teacher/samples/latest.png $OUT/samples.png
cp runs/shapes-teacher/metrics.jsonl $OUT/
tar cf - -C runs teacher-export | split -b 15000000 - $OUT/teacher.tar.
