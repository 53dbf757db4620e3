# One GPU call: anneal the text teacher, refresh the CD4LM student against it (starting from the
# shipped student), then benchmark both (bench text). Carry .device/wheels and .device/fortunes.
# Usage: bash scripts/device_text2.sh ANNEAL_MINUTES CD4LM_MINUTES
source scripts/device_env.sh
export PYTHONPATH=.
R=runs/round && rm -rf $R && mkdir -p $R runs/exports
python -m trainer train configs/text-teacher-anneal.yaml --max_minutes=$1 --export.output_dir=runs/exports/text-teacher \
  2>&1 | grep -v "Writing model shards" > $R/text-teacher-anneal.log
cp runs/text-teacher-anneal/metrics.jsonl $R/metrics-text-teacher-anneal.jsonl
rm -rf checkpoints/text-teacher && cp -r runs/exports/text-teacher checkpoints/text-teacher
python -m trainer train configs/text-cd4lm.yaml --max_minutes=$2 --init_from=checkpoints/text-cd4lm \
  --export.output_dir=runs/exports/text-cd4lm 2>&1 | grep -v "Writing model shards" > $R/text-cd4lm.log
cp runs/text-cd4lm/metrics.jsonl $R/metrics-text-cd4lm.jsonl
rm -rf checkpoints/text-cd4lm && cp -r runs/exports/text-cd4lm checkpoints/text-cd4lm
python -m bench text --out $R/bench > $R/bench-text.log 2>&1
tail -n 4 $R/text-teacher-anneal.log $R/text-cd4lm.log $R/bench-text.log
tar cf $OUT/results.tar -C $R .  # $OUT returns at most 8 files
tar cf - -C runs/exports . | split -b 15000000 - $OUT/exports.tar.
ls -la $OUT
