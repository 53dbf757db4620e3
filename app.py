"""Distillery studio entry point (also the Hugging Face Space entry): `python app.py [--device cpu] [--checkpoints DIR]`."""

from __future__ import annotations

import argparse
import logging
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Distillery studio (Gradio) in the browser.")
    parser.add_argument(
        "--host",
        default="0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1",
        help="address to listen on (default: 0.0.0.0 on a Hugging Face Space, else 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="port (default: $GRADIO_SERVER_PORT or 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where models run (default: auto)")
    parser.add_argument(
        "--checkpoints", action="append", default=[], metavar="DIR", help="extra checkpoint directory to scan (repeatable)"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the studio accepts (default: 8)")
    parser.add_argument(
        "--no-train-tab",
        action="store_true",
        help="turn the Train tab off entirely (public deployments; also DISTILLERY_TRAIN_TAB=0)",
    )
    parser.add_argument(
        "--data-dir", help="job store, runs and published students (default: $DISTILLERY_DATA_DIR or ~/.distillery)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH",
        help="add one checkpoint directory, with or without a Distillery card (e.g. a public masked LM; repeatable)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let public checkpoints that ship their own modelling code (LLaDA, Dream) run it "
        "(also DISTILLERY_TRUST_REMOTE_CODE=1); only for code you trust",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from studio.app import StudioSettings, build_registry, build_ui, launch

    settings = StudioSettings(
        host=args.host,
        port=args.port,
        share=args.share,
        device=args.device,
        checkpoints=args.checkpoints,
        max_batch=args.max_batch,
        data_dir=args.data_dir,
    )
    if args.no_train_tab:
        settings.train_tab = False
    if args.trust_remote_code:
        os.environ["DISTILLERY_TRUST_REMOTE_CODE"] = "1"
    registry = build_registry(settings)
    from engines.errors import CheckpointError

    for model in args.model:
        try:
            registry.add(model)
        except CheckpointError as err:
            raise SystemExit(f"--model {model}: {err}") from None
    launch(build_ui(registry, settings), settings)


if __name__ == "__main__":
    main()
