# One GPU call: distil the shipped image teacher with every method at once (each its own process;
# small UNets leave the GPU mostly idle), then benchmark the teacher and the students on it.
# Returns the bench result, cards, metrics and logs as one tar under $OUT.
# Usage: bash scripts/device_methods.sh MINUTES "lcm scm guidance" [BENCH_MODELS]
# (a method "reflow" runs both reflow stages: 55 % of the minutes straightening, the rest the one-step map).
# Each process gets 4 CPU threads: unbounded, four trainings oversubscribe the machine's 16 cores
# and their final evaluations (the judge runs on the CPU) crawl.
source scripts/device_env.sh
export PYTHONPATH=.
M=${1:-4}
METHODS=${2:-"lcm scm guidance"}
export OMP_NUM_THREADS=4
R=runs/methods && rm -rf $R runs/exports && mkdir -p $R runs/exports
train() {  # config-name minutes [overrides]
  local name=$1 minutes=$2; shift 2
  python -m trainer train configs/$name.yaml --max_minutes=$minutes --compile=false --num_workers=3 \
    --export.output_dir=runs/exports/$name "$@" 2>&1 | grep --line-buffered -v "kept in float32" > $R/$name.log
  cp runs/$name/metrics.jsonl $R/metrics-$name.jsonl; cp runs/exports/$name/card.json $R/card-$name.json
  rm -rf checkpoints/$name && cp -r runs/exports/$name checkpoints/$name
}
MODELS=""
for m in $METHODS; do
  if [ "$m" = reflow ]; then
    (train shapes-reflow $(python3 -c "print(round($M*0.55, 2))") && \
     train shapes-reflow-distill $(python3 -c "print(round($M*0.45, 2))") --init_from=runs/exports/shapes-reflow) &
    MODELS="$MODELS,shapes-reflow,shapes-reflow-distill"
  else
    train shapes-$m $M &
    MODELS="$MODELS,shapes-$m"
  fi
done
wait
tail -n 3 $R/*.log
python -m bench image --models ${3:-${MODELS#,}} --latency-repeats 10 --out $R/bench > $R/bench-image.log 2>&1
tail -n 30 $R/bench-image.log
tar cf $OUT/results.tar -C $R .
