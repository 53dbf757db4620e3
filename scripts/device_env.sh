# Source on the lent GPU machine (no network there): installs carried wheels and points the
# text encoder at the carried float16 copy of all-MiniLM-L6-v2. Prepare them here with
# scripts/prepare_device_carry.sh and name `.device` in the run's carry list.
set -e
python3 -m pip install --quiet --no-deps --no-index .device/wheels/*.whl 2>&1 | tail -2
# The pruned word-embedding table is expanded into runs/ (kept between calls), in a folder named by the pruned
# file's digest: a later call's carry replaces .device/minilm, and a run detached by an earlier call must not
# lose its encoder mid-way (session 18: a detached teacher stage's judge failed exactly so).
if [ -f .device/minilm/model.pruned.safetensors ]; then
  MINILM=runs/minilm-$(sha256sum .device/minilm/model.pruned.safetensors | cut -c1-12)
  if [ ! -f $MINILM/model.safetensors ]; then
    rm -rf $MINILM.tmp && mkdir -p $MINILM.tmp
    find .device/minilm -maxdepth 1 -type f ! -name "model.pruned.safetensors" -exec cp {} $MINILM.tmp/ \;
python3 - $MINILM.tmp <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
state = load_file(".device/minilm/model.pruned.safetensors")
ids, rows, shape = (state.pop(f"embeddings.word_embeddings.{k}") for k in ("ids", "rows", "shape"))
table = torch.zeros(tuple(shape.tolist()), dtype=rows.dtype)
table[ids] = rows
state["embeddings.word_embeddings.weight"] = table
save_file(state, sys.argv[1] + "/model.safetensors")
PY
    rm -rf $MINILM && mv $MINILM.tmp $MINILM  # whole or not at all
  fi
  export DISTILLERY_TEXT_ENCODER_DIR="${DISTILLERY_TEXT_ENCODER_DIR:-$PWD/$MINILM}"
else  # an unpruned copy carried as it is
  export DISTILLERY_TEXT_ENCODER_DIR="${DISTILLERY_TEXT_ENCODER_DIR:-$PWD/.device/minilm}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
export DISTILLERY_FORTUNES_DIR="$PWD/.device/fortunes"
