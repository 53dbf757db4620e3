"""`python -m bench rows DEST.json --add SRC.json --models a,b [--rename OLD=NEW] [--update-cards]`: move rows
measured by one run of `bench image` into another result file of the same device and prompts.

Why: a device run often benches a variant under its run name (`shapes-dmd2-reg-1step-gan`) into a scratch copy
of the result file, and the variant then ships under the id users know (`shapes-dmd2`). Benching it again
only to rename it would spend device time on numbers we already have. A renamed row is accepted only when the
checkpoint now under the new id holds exactly the weights the row measured (the row's `weights` digest), and
it keeps the name it was measured under in `benched_as`. Every row keeps the stamp of the run that measured it
(`measured`), so the file says where each number came from."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench.common import write_result
from bench.image import _steps_by_model, measured_by, merged, summarise, update_cards
from bench.image_cache import weights_digest
from bench.image_plots import plot
from engines.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench rows", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="the image result file to add rows to (rewritten with its .md)")
    parser.add_argument("--add", type=Path, required=True, help="the result file that measured the rows")
    parser.add_argument("--models", required=True, help="comma-separated models whose rows to take from --add")
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="store OLD's rows under NEW: the checkpoint NEW must hold the weights they measured",
    )
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="where the checkpoints live")
    parser.add_argument("--update-cards", action="store_true", help="quote the added rows in their models' cards")
    return parser.parse_args(argv)


def renames(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise SystemExit(f"--rename takes OLD=NEW, got {pair!r}")
        out[old] = new
    return out


def load_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read result file {path}: {err}") from err
    if result.get("suite") != "image":
        raise SystemExit(f"{path} is a {result.get('suite')!r} result; `bench rows` handles image results")
    return result


def stamped(row: dict, result: dict) -> dict:
    """The row with the run that measured it (`bench.image.measured_by`)."""
    return row | {"measured": measured_by(row, result)}


def taken_rows(source: dict, models: list[str], new_names: dict[str, str], checkpoints: Path) -> list[dict]:
    rows = []
    for model in models:
        mine = [r for r in source["rows"] if r["model"] == model]
        if not mine:
            raise SystemExit(f"the source file has no rows of {model!r}; it holds {sorted({r['model'] for r in source['rows']})}")
        name = new_names.get(model, model)
        if name != model:
            path = checkpoints / name
            if not path.is_dir():
                raise SystemExit(f"--rename {model}={name}: no checkpoint {path}")
            digest = weights_digest(path)
            wrong = [r["steps"] for r in mine if r.get("weights") != digest]
            if wrong:
                raise SystemExit(
                    f"--rename {model}={name}: {path} does not hold the weights its rows at {wrong} steps measured "
                    "(sha256 of the safetensors files differs); bench it again instead"
                )
        rows += [stamped(r, source) | ({"model": name, "benched_as": model} if name != model else {}) for r in mine]
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    new_names = renames(args.rename)
    models = [m for m in args.models.split(",") if m]
    if unknown := sorted(set(new_names) - set(models)):
        raise SystemExit(f"--rename names {unknown}, which --models does not take")
    dest, source = load_result(args.dest), load_result(args.add)
    for key in ("device", "prompts"):
        if dest.get(key) != source.get(key):
            raise SystemExit(
                f"{args.add} was measured with {key} {source.get(key)!r} and {args.dest} with {dest.get(key)!r}: "
                "rows measured differently cannot share a table"
            )
    added = taken_rows(source, models, new_names, args.checkpoints)
    replaced = {(r["model"], r["steps"]) for r in added}
    kept = [stamped(r, dest) for r in dest["rows"] if (r["model"], r["steps"]) not in replaced]
    rows = merged(kept, added, [new_names.get(m, m) for m in models])
    by_model: dict[str, list[dict]] = {}
    for r in added:
        by_model.setdefault(r["model"], []).append(r)
    note = "".join(
        f" Rows of {_steps_by_model(mine)} added from the run of {mine[0]['measured']['created']} "
        f"(git {mine[0]['measured']['git']})"
        + (f", benched there as {mine[0]['benched_as']} (the same weights)." if "benched_as" in mine[0] else ".")
        for mine in by_model.values()
    )
    extra = {k: v for k, v in dest.items() if k not in ("suite", "device", "created", "git", "rows", "summary")}
    extra["notes"] = extra.get("notes", "") + note
    slug = args.dest.stem.removeprefix("image-")
    json_path, md_path = write_result("image", slug, dest["device"], rows, summarise(rows), extra, args.dest.parent)
    result = json.loads(json_path.read_text())
    plot(result, args.dest.parent, slug)  # the plots follow the rows
    for model in models:  # the run's sample sheet travels with its rows
        sheet = args.add.parent / f"image-{model}-{slug}.png"
        if sheet.is_file():
            shutil.copyfile(sheet, args.dest.parent / f"image-{new_names.get(model, model)}-{slug}.png")
    print(f"wrote {json_path} and {md_path}")
    if args.update_cards:
        update_cards(Registry([args.checkpoints], device="cpu"), rows, json_path)
    return result
