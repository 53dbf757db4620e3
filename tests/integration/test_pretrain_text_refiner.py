"""scripts/pretrain_text_refiner.py: a teacher's text refiner trained to expose binding and relations."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.checkpoints import load_diffusers_model
from engines.refined_unet import TextRefiner
from trainer.worlds import shapes

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # scripts run from the repository root with PYTHONPATH=.
SCRIPT = REPO / "scripts" / "pretrain_text_refiner.py"
spec = importlib.util.spec_from_file_location("pretrain_text_refiner", SCRIPT)
pretrain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pretrain)


def test_labels_follow_the_condition_from_the_asked_objects_side() -> None:
    captions, asked, colours, relations = pretrain.labelled_captions(40, seed=3)
    assert len(captions) == 40 and asked.shape == colours.shape == relations.shape == (40,)
    assert all(not shapes.is_eval_caption(c) for c in captions)  # never trains on held-out captions
    assert (relations[0::2] == pretrain.NO_RELATION).all()  # colour-binding scenes have no relation
    assert ((relations[1::2] >= 0) & (relations[1::2] < len(shapes.RELATIONS))).all()
    # the labels are the caption's own: the asked shape and its colour are both named in it
    for caption, shape, colour in zip(captions, asked, colours):
        words = caption.lower()
        assert any(w in words for w in shapes.SHAPES[shapes.SHAPE_NAMES[shape]][0])
        assert any(w in words for w in shapes.COLORS[shapes.COLOR_NAMES[colour]][1])


def test_pretraining_moves_the_refiner_and_reports_accuracy(text_encoder) -> None:
    torch.manual_seed(0)
    refiner = TextRefiner(384, 16, 1, 2, positions=40)
    start = [p.detach().clone() for p in refiner.parameters()]
    report = pretrain.pretrain_refiner(refiner, text_encoder, captions=48, steps=4, batch_size=16)
    assert set(report) == {"before", "after", "final_loss"}
    for accuracy in (report["before"], report["after"]):
        assert 0.0 <= accuracy["colour"] <= 1.0 and 0.0 <= accuracy["relation"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(start, refiner.parameters()))
    assert not refiner.training
    with pytest.raises(ValueError, match="captions >= 20"):
        pretrain.pretrain_refiner(refiner, text_encoder, captions=4)


def test_cli_writes_an_init_checkpoint_and_leaves_the_source_alone(tiny_image_root, tmp_path) -> None:
    source = tiny_image_root / "tiny-cpu"
    before = sorted((p.relative_to(source), p.stat().st_mtime_ns) for p in source.rglob("*"))
    out = tmp_path / "init"
    args = [str(source), str(out), "--captions", "40", "--steps", "2", "--dim", "16", "--heads", "2", "--device", "cpu"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted((p.relative_to(source), p.stat().st_mtime_ns) for p in source.rglob("*")) == before
    unet = load_diffusers_model(out / "unet", "UNet2DConditionModel")
    assert unet.config.text_refiner_layers == 2 and unet.config.text_refiner_positions == 40
    assert unet.config.position_frequencies == 6
    assert json.loads((out / "card.json").read_text())["id"] == "tiny-cpu"
    assert set(json.loads((out / "refiner_pretrain.json").read_text())) == {"before", "after", "final_loss"}
    same = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), str(source)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert same.returncode != 0 and "must differ" in same.stderr
