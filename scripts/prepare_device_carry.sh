#!/usr/bin/env bash
# Builds .device/ (git-ignored): wheels the GPU machine lacks, and a float16 copy of the packaged
# MiniLM whose word-embedding table keeps only the rows the shapes world's captions use (23 MB
# instead of 45 MB; the float32 original is 90 MB), so carry + tree (with a 24 MB teacher) fit the
# 64 MiB limit. scripts/device_env.sh expands it back to a full table (unused rows zero) on the GPU.
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
state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
import random
import torch
from transformers import AutoTokenizer
from trainer.worlds import shapes
tokenizer = AutoTokenizer.from_pretrained(str(src))
rng = random.Random(0)
captions = [shapes.caption_for(shapes._condition(rng, rng.choice(shapes.CATEGORIES)), rng) for _ in range(100_000)]
from trainer.worlds import motion  # the motion world's captions (train and eval), for the video models
captions += [motion.sample_clip(rng, 16, split, rng.random() < 0.3).caption for split in ("train", "eval") for _ in range(15_000)]
captions += ["a red ball bouncing to the right and a blue square sliding up", "a green triangle moving left quickly"]
words = [w for table in (shapes.COLORS, shapes.SIZES) for _, synonyms in table.values() for w in synonyms]
words += [w for singular, plural in shapes.SHAPES.values() for w in singular + plural]
ids = {i for text in captions + words for i in tokenizer(text)["input_ids"]} | set(tokenizer.all_special_ids)
ids = torch.tensor(sorted(ids))
table = state.pop("embeddings.word_embeddings.weight")
state["embeddings.word_embeddings.ids"] = ids
state["embeddings.word_embeddings.rows"] = table[ids].contiguous()
state["embeddings.word_embeddings.shape"] = torch.tensor(table.shape)
save_file(state, str(dst / "model.pruned.safetensors"))
(dst / "model.safetensors").unlink(missing_ok=True)
print(f"kept {len(ids)} of {table.shape[0]} word embeddings")
PY
du -sh .device
# Debian's fortune files (free text for the text world): the GPU machine cannot apt-get.
mkdir -p .device/fortunes
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -exec cp {} .device/fortunes/ \;
du -sh .device/fortunes .device
