# One GPU call: bench text on the shipped text checkpoints. Carry .device/wheels.
source scripts/device_env.sh
export PYTHONPATH=.
mkdir -p runs/round
python -m bench text --out runs/round > runs/round/bench-text.log 2>&1
tail -n 3 runs/round/bench-text.log
tar cf $OUT/results.tar -C runs/round .
