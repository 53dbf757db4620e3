"""Distillery studio entry point (also the Hugging Face Space entry): `python app.py [--device cpu] [--checkpoints DIR]
[--model DIR [--lora DIR]]`."""

from __future__ import annotations

import argparse
import logging
import os


class _LoraForLastModel(argparse.Action):
    """`--model BASE --lora DIR`: records (BASE, DIR) in `args.loras`, so each LoRA goes with the model before it."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if not namespace.model:
            parser.error(f"{option_string} {value}: give the base pipeline first, e.g. --model BASE_DIR {option_string} {value}")
        namespace.loras = [*(namespace.loras or []), (namespace.model[-1], value)]


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
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="dynamic batching: how long an Image-tab request waits for others with the same model and settings to "
        "join it in one batched call (default: 5; 0 turns batching off)",
    )
    parser.add_argument(
        "--max-batch-images",
        type=int,
        default=32,
        help="dynamic batching: the most images one batched call samples (default: 32)",
    )
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
        "--lora",
        action=_LoraForLastModel,
        metavar="DIR",
        help="a LoRA directory (e.g. LCM-LoRA, safetensors) for the diffusers pipeline given by the --model just before it; "
        "that model is served both as is and with the LoRA fused",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let public checkpoints that ship their own modelling code (LLaDA, Dream) run it "
        "(also DISTILLERY_TRUST_REMOTE_CODE=1); only for code you trust",
    )
    parser.set_defaults(loras=[])
    return parser.parse_args(argv)


def add_models(registry, args: argparse.Namespace) -> None:
    """Add each --model directory, and each base pipeline again with its --lora; a bad one stops the start."""
    from engines.errors import CheckpointError

    for model in args.model:
        try:
            registry.add(model)
        except CheckpointError as err:
            raise SystemExit(f"--model {model}: {err}") from None
    for model, lora in args.loras:
        try:
            registry.add(model, lora=lora)
        except CheckpointError as err:
            raise SystemExit(f"--model {model} --lora {lora}: {err}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from studio.app import StudioSettings, build_registry, build_ui, launch

    try:
        settings = StudioSettings(
            host=args.host,
            port=args.port,
            share=args.share,
            device=args.device,
            checkpoints=args.checkpoints,
            max_batch=args.max_batch,
            data_dir=args.data_dir,
            batch_window_ms=args.batch_window_ms,
            max_batch_images=args.max_batch_images,
        )
    except ValueError as err:  # --batch-window-ms / --max-batch-images out of range
        raise SystemExit(f"app.py: {err}") from None
    if args.no_train_tab:
        settings.train_tab = False
    if args.trust_remote_code:
        os.environ["DISTILLERY_TRUST_REMOTE_CODE"] = "1"
    registry = build_registry(settings)
    add_models(registry, args)
    launch(build_ui(registry, settings), settings)


if __name__ == "__main__":
    main()
