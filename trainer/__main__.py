"""CLI: python -m trainer train <config.yaml> [--key=value ...]"""

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
    args, unknown = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            from trainer.loop import train

            config = load_config(args.config, list(args.overrides) + unknown)
            summary = train(config)
            print(json.dumps(summary, indent=2))
            return 0
    except (ConfigError, DistilleryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
