"""CLI: python -m trainer train <config.yaml> [--key=value ...] | export <checkpoint> --to onnx|tensorrt"""

from __future__ import annotations

import argparse
import json
import sys

from engines.errors import DistilleryError
from trainer.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Distillery trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train (or resume) a run from a YAML config")
    train_p.add_argument("config", help="YAML config file (keys of trainer.config.TrainConfig)")
    train_p.add_argument("overrides", nargs="*", help="--key=value overrides, dotted keys for nested fields")
    export_p = sub.add_parser("export", help="export a checkpoint for serving (ONNX / TensorRT), gated by a parity check")
    export_p.add_argument("checkpoint", help="checkpoint directory (with card.json)")
    export_p.add_argument("--to", choices=("onnx", "tensorrt"), default="onnx", dest="target")
    export_p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: trainer.export.DEFAULT_OPSET)")
    export_p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="weights' dtype in the ONNX graph")
    jobs_p = sub.add_parser("jobs", help="background training jobs (the studio's Train tab, headless)")
    jobs_p.add_argument("action", choices=["list", "start", "cancel", "resume", "delete", "publish"])
    jobs_p.add_argument("target", nargs="?", help="start: a YAML config; other actions: a job id")
    jobs_p.add_argument("--data-dir", help="store and runs directory (default: $DISTILLERY_DATA_DIR or ~/.distillery)")
    jobs_p.add_argument("--name", help="start: the job's name (default: the config's export.id)")
    jobs_p.add_argument("--wait", action="store_true", help="start/resume: stay until the job ends (runs the queue)")
    jobs_p.add_argument("--to", help="publish: the checkpoint root to copy into (default: <data-dir>/published)")
    jobs_p.add_argument("--json", action="store_true", help="list: print JSON")
    args, unknown = parser.parse_known_args(argv)
    if args.command == "jobs":
        from jobs.cli import run_jobs  # imported only here: `train` stays free of the studio package

        return run_jobs(args, unknown)
    try:
        if args.command == "train":
            from trainer.loop import train

            config = load_config(args.config, list(args.overrides) + unknown)
            summary = train(config)
            print(json.dumps(summary, indent=2))
            return 0
        if args.command == "export":
            if unknown:
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            from trainer.export import DEFAULT_OPSET, export_onnx, export_tensorrt

            opset = args.opset or DEFAULT_OPSET
            if args.target == "tensorrt":
                report = export_tensorrt(args.checkpoint, opset=opset)
            else:
                report = export_onnx(args.checkpoint, opset=opset, dtype=args.dtype)
            print(json.dumps(report, indent=2))
            return 0
    except (ConfigError, DistilleryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
