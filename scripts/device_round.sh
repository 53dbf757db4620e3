# One GPU call that trains the text teacher while DMD2 distils the image teacher and the image
# benchmark runs on the result (two processes share the GPU: small models leave it mostly idle).
# Returns the text teacher and the DMD2 student as split tars, logs, metrics and bench results.
# Usage: bash scripts/device_round.sh TEXT_MINUTES DMD2_MINUTES
source scripts/device_env.sh
export PYTHONPATH=.
mkdir -p runs/exports
R=runs/round && rm -rf $R && mkdir -p $R
(
  python -m trainer train configs/text-teacher.yaml --max_minutes=$1 --num_workers=6 --export.output_dir=runs/exports/text-teacher \
    > $R/text-teacher.log 2>&1
  cp runs/text-teacher/metrics.jsonl $R/metrics-text-teacher.jsonl
  cp runs/text-teacher/samples/latest.png $R/text-teacher-samples.png
) &
(
  python -m trainer train configs/shapes-dmd2.yaml --max_minutes=$2 --num_workers=6 --export.output_dir=runs/exports/shapes-dmd2 \
    2>&1 | grep -v "kept in float32" > $R/dmd2.log
  cp runs/shapes-dmd2/metrics.jsonl $R/metrics-dmd2.jsonl
  rm -rf checkpoints/shapes-dmd2 && cp -r runs/exports/shapes-dmd2 checkpoints/shapes-dmd2
  python -m bench image --models shapes-teacher,shapes-dmd2 --out $R/bench > $R/bench-image.log 2>&1
) &
wait
tail -5 $R/text-teacher.log $R/dmd2.log $R/bench-image.log
tar cf $OUT/results.tar -C $R .  # $OUT returns at most 8 files
tar cf - -C runs/exports . | split -b 15000000 - $OUT/exports.tar.
ls -la $OUT
