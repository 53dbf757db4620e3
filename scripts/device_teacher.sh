# Train a teacher stage on the lent GPU in one call: one or several variants of a config at once,
# each its own process (a small UNet leaves the GPU mostly idle), each judged on 560 held-out prompts
# (seed 99, 25 steps, guidance 1.5). Returns every variant's log, metrics, samples and judge result
# in results.tar, and the best variant's exported checkpoint in 15 MB parts (teacher-NAME.tar.*).
# Usage: bash scripts/device_teacher.sh CONFIG MINUTES [NAME="--key=value ..." ...]
#   bash scripts/device_teacher.sh configs/shapes-teacher-grounded.yaml 5 \
#     light="--method_config.attention_token_weight=0.01" heavy="--method_config.attention_token_weight=0.05"
# A run resumes from runs/NAME if the machine is still warm from an earlier call (raise --max_steps).
# A config whose init_from is runs/teacher-refiner-init gets it made first (scripts/pretrain_text_refiner.py).
source scripts/device_env.sh
export PYTHONPATH=. OMP_NUM_THREADS=4
CONFIG=$1 MINUTES=$2
shift 2
[ $# -eq 0 ] && set -- "main="
R=runs/variants && rm -rf $R && mkdir -p $R
INIT=$(python -c "from trainer.config import load_config; print(load_config('$CONFIG').init_from or '')")
if [ "$INIT" = runs/teacher-refiner-init ] && [ ! -d "$INIT" ]; then
  python scripts/pretrain_text_refiner.py checkpoints/shapes-teacher "$INIT" > $R/refiner-pretrain.log 2>&1
  cp "$INIT"/refiner_pretrain.json $R/
fi
for v in "$@"; do
  name=${v%%=*} overrides=${v#*=}
  (
    python -m trainer train "$CONFIG" --run_dir=runs/$name --max_minutes=$MINUTES --num_workers=3 \
      --export.output_dir=runs/export-$name $overrides 2>&1 | grep --line-buffered -v "kept in float32" > $R/$name-train.log
    cp runs/$name/metrics.jsonl $R/$name-metrics.jsonl
    cp runs/$name/samples/latest.png $R/$name-samples.png
    timeout 240 python scripts/judge_checkpoint.py runs/export-$name --n 560 --steps 25 --guidance 1.5 \
      --json $R/$name-judge.json > $R/$name-judge.log 2>&1
  ) &
done
wait
tail -n 3 $R/*-train.log $R/*-judge.log
tar cf $OUT/results.tar -C $R .
BEST=$(python - "$R" <<'PY'
import json, sys
from pathlib import Path
scores = {}
for path in Path(sys.argv[1]).glob("*-judge.json"):
    result = json.loads(path.read_text())
    scores[path.name[: -len("-judge.json")]] = max(r["overall"] for r in result["results"]) if "results" in result else result.get("overall", 0)
print(max(scores, key=scores.get) if scores else "")
PY
)
[ -n "$BEST" ] && tar cf - -C runs export-$BEST | split -b 15000000 - $OUT/teacher-$BEST.tar.
echo "best: $BEST"
