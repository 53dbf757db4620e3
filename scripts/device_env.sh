# Source on the lent GPU machine (no network there): installs carried wheels and points the
# text encoder at the carried float16 copy of all-MiniLM-L6-v2. Prepare them here with
# scripts/prepare_device_carry.sh and name `.device` in the run's carry list.
set -e
python3 -m pip install --quiet --no-deps --no-index .device/wheels/*.whl 2>&1 | tail -2
export DISTILLERY_TEXT_ENCODER_DIR="$PWD/.device/minilm"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
