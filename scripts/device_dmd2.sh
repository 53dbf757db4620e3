# One GPU call: distil the shipped image teacher with DMD2 (alone on the GPU), then bench image on
# teacher and student. Carry .device (MiniLM + wheels); keep other checkpoints out of the tree.
# Usage: bash scripts/device_dmd2.sh DMD2_MINUTES
source scripts/device_env.sh
export PYTHONPATH=.
R=runs/round && rm -rf $R && mkdir -p $R runs/exports
python -m trainer train configs/shapes-dmd2.yaml --max_minutes=$1 --export.output_dir=runs/exports/shapes-dmd2 \
  2>&1 | grep -v "kept in float32" > $R/dmd2.log
cp runs/shapes-dmd2/metrics.jsonl $R/metrics-dmd2.jsonl
cp runs/shapes-dmd2/samples/latest.png $R/dmd2-samples.png 2>/dev/null
rm -rf checkpoints/shapes-dmd2 && cp -r runs/exports/shapes-dmd2 checkpoints/shapes-dmd2
python -m bench image --models shapes-teacher,shapes-dmd2 --out $R/bench > $R/bench-image.log 2>&1
tail -n 4 $R/dmd2.log $R/bench-image.log
tar cf $OUT/results.tar -C $R .
tar cf - -C runs/exports . | split -b 15000000 - $OUT/exports.tar.
