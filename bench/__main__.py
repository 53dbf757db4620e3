"""python -m bench <suite> [options]: suites write bench/results/<suite>-<device>.json and .md.
`python -m bench rows` moves rows one run measured into another result file (bench/rows.py); `python -m bench paired`
compares the judge verdicts of a result file's rows image by image (bench/paired.py)."""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "image": "bench.image",
    "text": "bench.text",
    "video": "bench.video",
    "serving": "bench.serving",
    "load": "bench.load",
    "rows": "bench.rows",  # not a suite: edits result files the suites wrote
    "paired": "bench.paired",  # not a suite: compares rows of one image result file prompt by prompt
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
        print(f"usage: python -m bench <suite> [options]; suites: {', '.join(SUITES)}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    importlib.import_module(SUITES[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
