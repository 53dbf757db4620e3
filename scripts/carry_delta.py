"""Carry a fine-tuned checkpoint to the lent GPU as a compressed delta against the one it was tuned from.

The device carries at most 64 MiB (tree + carry). A student distilled from a teacher shares its layout, and
after a few thousand steps most high bits of each fp16 weight still agree, so the XOR of the two bit
patterns compresses well (20.8 MB -> 13 MB for motion-student against motion-teacher). Bit-exact.

  python scripts/carry_delta.py pack checkpoints/motion-student checkpoints/motion-teacher .device/student
  python scripts/carry_delta.py unpack .device/student checkpoints/motion-teacher checkpoints/motion-student
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
BITS = {2: np.uint16, 4: np.uint32}


def _weight_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.safetensors"))


def pack(model: Path, base: Path, out: Path) -> int:
    """Write `out`: every non-weight file of `model`, plus per weight file its layout and an lzma'd XOR
    against `base`'s file of the same relative path (same tensor names, shapes and dtypes required)."""
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    shutil.copytree(model, out / "files", ignore=shutil.ignore_patterns("*.safetensors"))
    layout: dict[str, dict[str, list]] = {}
    for rel in _weight_files(model):
        mine, theirs = load_file(model / rel), load_file(base / rel)
        for name, array in mine.items():
            other = theirs.get(name)
            if other is None or other.shape != array.shape or other.dtype != array.dtype or array.itemsize not in BITS:
                raise SystemExit(f"{rel}:{name} has no same-shaped, same-dtype 2- or 4-byte tensor in {base}")
        names = sorted(mine)
        bits = b"".join((mine[n].view(BITS[mine[n].itemsize]) ^ theirs[n].view(BITS[mine[n].itemsize])).tobytes() for n in names)
        layout[str(rel)] = {n: [mine[n].dtype.str, list(mine[n].shape)] for n in names}
        target = out / "deltas" / (str(rel) + ".xor.xz")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(bits, preset=6))
    (out / "layout.json").write_text(json.dumps(layout))
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def unpack(packed: Path, base: Path, dest: Path) -> None:
    """Rebuild the model packed by `pack` at `dest`, bit for bit."""
    if dest.exists():
        raise SystemExit(f"{dest} exists; remove it first")
    layout = json.loads((packed / "layout.json").read_text())
    shutil.copytree(packed / "files", dest)
    for rel, tensors in layout.items():
        theirs = load_file(base / rel)
        bits = lzma.decompress((packed / "deltas" / (rel + ".xor.xz")).read_bytes())
        offset, out = 0, {}
        for name, (dtype, shape) in tensors.items():
            dtype = np.dtype(dtype)
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            xor = np.frombuffer(bits, dtype=BITS[dtype.itemsize], count=size // dtype.itemsize, offset=offset)
            out[name] = (xor ^ theirs[name].view(BITS[dtype.itemsize]).reshape(-1)).view(dtype).reshape(shape)
            offset += size
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(dest / rel), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path, help="pack: the model; unpack: the packed directory")
    parser.add_argument("base", type=Path, help="the checkpoint the model was tuned from")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    if args.action == "pack":
        print(f"packed {args.source} against {args.base}: {pack(args.source, args.base, args.dest) / 1e6:.1f} MB")
    else:
        unpack(args.source, args.base, args.dest)
        print(f"rebuilt {args.dest}")


if __name__ == "__main__":
    main()
