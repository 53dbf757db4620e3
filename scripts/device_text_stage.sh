# One GPU call: a further training stage of a shipped text model (CONFIG's export.output_dir is replaced),
# then `bench text` on the shipped text checkpoints. Carry .device/wheels and .device/fortunes.
# Usage: bash scripts/device_text_stage.sh CONFIG [--key=value overrides]
source scripts/device_env.sh
export PYTHONPATH=.
CONFIG=${1:?a text training config}
shift
R=runs/round && rm -rf $R runs/exports && mkdir -p $R runs/exports
read -r OUT_DIR RUN_DIR < <(python -c "from trainer.config import load_config; c = load_config('$CONFIG'); print(c.export.output_dir, c.run_dir)")
NAME=$(basename "$OUT_DIR")
python -m trainer train "$CONFIG" --export.output_dir=runs/exports/$NAME "$@" 2>&1 | grep -v "Writing model shards" > $R/train.log
cp $RUN_DIR/metrics.jsonl $R/metrics-$NAME.jsonl
rm -rf "$OUT_DIR" && cp -r runs/exports/$NAME "$OUT_DIR"
python -m bench text --out $R/bench ${BENCH_ARGS:-} > $R/bench-text.log 2>&1
tail -n 6 $R/train.log; tail -n 3 $R/bench-text.log
tar cf $OUT/results.tar -C $R .
tar cf - -C runs/exports . | split -b 15000000 - $OUT/exports.tar.
