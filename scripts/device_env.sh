# Source on the lent GPU machine (no network there): installs carried wheels and points the
# text encoder at the carried float16 copy of all-MiniLM-L6-v2. Prepare them here with
# scripts/prepare_device_carry.sh and name `.device` in the run's carry list.
set -e
python3 -m pip install --quiet --no-deps --no-index .device/wheels/*.whl 2>&1 | tail -2
if [ -f .device/minilm/model.pruned.safetensors ] && [ ! -f .device/minilm/model.safetensors ]; then  # expand the pruned word-embedding table
python3 - <<'PY'
import torch
from safetensors.torch import load_file, save_file
state = load_file(".device/minilm/model.pruned.safetensors")
ids, rows, shape = (state.pop(f"embeddings.word_embeddings.{k}") for k in ("ids", "rows", "shape"))
table = torch.zeros(tuple(shape.tolist()), dtype=rows.dtype)
table[ids] = rows
state["embeddings.word_embeddings.weight"] = table
save_file(state, ".device/minilm/model.safetensors")
PY
fi
export DISTILLERY_TEXT_ENCODER_DIR="${DISTILLERY_TEXT_ENCODER_DIR:-$PWD/.device/minilm}"  # a detached run may point at a copy
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
export DISTILLERY_FORTUNES_DIR="$PWD/.device/fortunes"
