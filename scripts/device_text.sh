# One GPU call for the text engine: distil the shipped text teacher with CD4LM, then benchmark
# teacher and student decoders (bench text). Image checkpoints and MiniLM need not travel:
# carry .device/wheels and .device/fortunes only.
# Usage: bash scripts/device_text.sh CD4LM_MINUTES
source scripts/device_env.sh
export PYTHONPATH=.
R=runs/round && rm -rf $R && mkdir -p $R runs/exports
python -m trainer train configs/text-cd4lm.yaml --max_minutes=$1 --export.output_dir=runs/exports/text-cd4lm \
  2>&1 | grep -v "Writing model shards" > $R/text-cd4lm.log
cp runs/text-cd4lm/metrics.jsonl $R/metrics-text-cd4lm.jsonl
cp runs/text-cd4lm/samples/latest.png $R/text-cd4lm-samples.png 2>/dev/null
rm -rf checkpoints/text-cd4lm && cp -r runs/exports/text-cd4lm checkpoints/text-cd4lm
python -m bench text --out $R/bench > $R/bench-text.log 2>&1
tail -n 5 $R/text-cd4lm.log $R/bench-text.log
tar cf $OUT/results.tar -C $R .  # $OUT returns at most 8 files
tar cf - -C runs/exports . | split -b 15000000 - $OUT/exports.tar.
ls -la $OUT
