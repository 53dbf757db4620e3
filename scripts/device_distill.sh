# Distil the shipped teacher with each method for one GPU call; exports go to runs/exports/<id>
# (git-ignored, so a following call on the same warm machine can benchmark them).
# Usage: bash scripts/device_distill.sh "dmd2:3.2 lcm:2.3 scm:2.3"
source scripts/device_env.sh
export PYTHONPATH=.
mkdir -p runs/exports
for job in $1; do
  m=${job%%:*}; minutes=${job##*:}
  echo "== $m ($minutes min)"
  timeout $(python3 -c "print(int($minutes*60+100))") python -m trainer train configs/shapes-$m.yaml \
    --max_minutes=$minutes --export.output_dir=runs/exports/shapes-$m 2>&1 | grep -E "^step|eval at|budget|Error|error" | tail -6
  cp runs/shapes-$m/metrics.jsonl $OUT/metrics-$m.jsonl 2>/dev/null
done
tar cf - -C runs exports | split -b 15000000 - $OUT/exports.tar.
