"""How much of an FD is the draw of the prompts: jackknife standard errors of each model's FD, of its difference from a
base model's, and of its ratio to a teacher's, for images an earlier `bench image --cache` run kept.

Why: issue 3's one-step target bounds FD by 1.5x the teacher's at 50 steps, and the shipped student sits 0.2 % inside
that bound (35.67 against 35.75 on the H100). Whether such margins, and the FD gaps between one-step variants, are
more than the choice of 560 prompts is what this measures. A grouped (delete-a-group) jackknife: the prompts are dealt
into `--groups` groups (prompt i into group i mod G, so each group holds every category alike), every FD is measured
again with one group left out, for every model and the reference renders together, so differences and ratios are
paired, and SE^2 = (G - 1) / G * sum over groups of (leave-one-out value - their mean)^2. `bench image` keeps the
same leave-one-out FDs in its rows since session 25 (`fd_jackknife`, read by `python -m bench paired`); this probe
is for the cached images of rows from before. Not the bootstrap: sets drawn with replacement repeat images, and
with 128-d features on 560 images that raised every FD by about 15 (35.7 read 51.6 on average), far more than the
spread to be measured.

    PYTHONPATH=. python scripts/probe_fd_spread.py BASE_CACHE [CACHE ...] [--teacher CACHE] [--prompts 560]
        [--groups 40]

Each CACHE is one model-and-step-count folder of a bench cache (bench/cache/shapes-dmd2-1steps-<key>).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.image_cache import cached_pixels
from bench.paired import fd_jackknife, jackknife_se
from engines.features import fid_features, frechet_distance, load_feature_network
from trainer.worlds import shapes

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FDSpread:
    name: str
    fd: float  # on all the prompts
    standard_error: float
    difference_se: float | None = None  # of this FD minus the base's, paired (None for the base itself)
    difference: float | None = None
    ratio: float | None = None  # this FD over the teacher's (with --teacher)
    ratio_se: float | None = None


def jackknife(
    generated: dict[str, np.ndarray], reference: np.ndarray, groups: int, base: str, teacher: str | None = None
) -> list[FDSpread]:
    """`generated`: features per model (N, D) in prompt order; `reference`: the renders' features of the same
    prompts. The leave-one-group-out FDs are `bench image`'s (`bench.paired.fd_jackknife`), so they pair up."""
    try:
        left_out = {name: np.asarray(fd_jackknife(feats, reference, groups)) for name, feats in generated.items()}
    except ValueError as err:
        raise SystemExit(str(err)) from err
    full = {name: frechet_distance(feats, reference) for name, feats in generated.items()}
    out = []
    for name in generated:
        spread = FDSpread(name, full[name], jackknife_se(left_out[name]))
        if name != base:
            spread.difference = full[name] - full[base]
            spread.difference_se = jackknife_se(left_out[name] - left_out[base])
        if teacher is not None and name != teacher:
            spread.ratio, spread.ratio_se = full[name] / full[teacher], jackknife_se(left_out[name] / left_out[teacher])
        out.append(spread)
    return out


def report(spreads: list[FDSpread], base: str, teacher: str | None) -> str:
    lines = []
    for s in spreads:
        line = f"{s.name}: FD {s.fd:.2f} ± {s.standard_error:.2f}"
        if s.difference is not None:
            line += f"; minus {base}'s: {s.difference:+.2f} ± {s.difference_se:.2f}"
        if s.ratio is not None:
            line += f"; over {teacher}'s: {s.ratio:.3f} ± {s.ratio_se:.3f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[FDSpread]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the cache folder the others are compared with")
    parser.add_argument("caches", nargs="*", type=Path, help="more cache folders of the same prompts and seeds")
    parser.add_argument("--teacher", type=Path, help="a cache folder whose FD the others are divided by")
    parser.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    parser.add_argument("--groups", type=int, default=40, help="jackknife groups (prompt i goes to group i mod G)")
    parser.add_argument("--features", type=Path, default=ROOT / "checkpoints" / "shapes-features")
    args = parser.parse_args(argv)
    network = load_feature_network(args.features)
    scenes = shapes.eval_scenes(args.prompts)
    reference = fid_features(network, shapes.to_uint8(shapes.render(scenes)))
    folders = [args.base, *args.caches, *([args.teacher] if args.teacher else [])]
    generated = {}
    for folder in folders:
        pixels = cached_pixels(folder, len(scenes))
        if pixels.shape[1:3] != (shapes.RESOLUTION, shapes.RESOLUTION):
            raise SystemExit(f"{folder} holds {pixels.shape[1]}-px images: this probe reads the world's 64-px rows")
        generated[folder.name] = fid_features(network, pixels)
    teacher = args.teacher.name if args.teacher else None
    spreads = jackknife(generated, reference, args.groups, args.base.name, teacher)
    print(f"FD against the renders of the same {args.prompts} prompts, ± a {args.groups}-group jackknife's standard error:")
    print(report(spreads, args.base.name, teacher))
    return spreads


if __name__ == "__main__":
    main()
