"""Training in stages: a run that continues a model reports the model's whole training, not just its
last stage. It continues one when init_from is a checkpoint under the export's id (a further stage), or
another student (a student fine-tuned from a student, e.g. a one-step specialist of a 1/2/4-step one,
cost both runs); a student started from its teacher reports its own cost, the teacher's card its own."""

from __future__ import annotations

import shutil
from pathlib import Path

from engines.card import CARD_FILE, ModelCard, load_card
from engines.errors import CheckpointError

SEEN_KEYS = ("images_seen", "clips_seen", "sequences_seen")
# what a run records about itself at its card's top level; its stage entry keeps a copy, because the next stage's
# run replaces the top level (session 24: a third stage's card had lost the second's ODE-pair set)
RUN_KEYS = ("init_from", "ode_pairs", "stage")
# where a run keeps the card of the checkpoint it started from (session 25: a device call's tree sync removed the
# init_from folder while its run trained, and the export, which read the card only then, failed after 765 steps)
PARENT_CARD_DIR = "init-from-card"


def keep_parent_card(init_from: str | None, run_dir: str | Path) -> None:
    """Copy the card of the checkpoint a run starts from into its run dir when the run begins. Once: a resumed run
    keeps the card of the weights it actually started from, even if the folder was re-exported since."""
    if not init_from:
        return
    source, kept = Path(init_from) / CARD_FILE, Path(run_dir) / PARENT_CARD_DIR / CARD_FILE
    if source.is_file() and not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, kept)


def continued_card(init_from: str | None, export_id: str, run_dir: str | Path | None = None) -> ModelCard | None:
    """The card of the model this run continues: one under the same id (a further training stage) or
    another student; else None (a fresh model, a student started from its teacher, or a checkpoint without our
    card). The run dir's copy (`keep_parent_card`) comes first, so init_from may be gone by export time."""
    if not init_from:
        return None
    kept = Path(run_dir) / PARENT_CARD_DIR if run_dir is not None else None
    if kept is not None and (kept / CARD_FILE).is_file():
        card = load_card(kept)
    elif (Path(init_from) / CARD_FILE).is_file():
        card = load_card(init_from)
    elif Path(init_from).is_dir():
        return None  # weights from elsewhere (e.g. a diffusers folder): no earlier stages of ours to report
    else:
        raise CheckpointError(
            f"init_from {init_from} is gone and {run_dir} keeps no copy of its card, so this model's earlier training "
            "cannot be reported: put the checkpoint back and export again"
        )
    return card if card.id == export_id or card.role == "student" else None


def with_earlier_stages(
    data: dict,
    seconds: float | None,
    init_from: str | None,
    export_id: str,
    run_dir: str,
    device: str | None = None,
) -> tuple[dict, float | None]:
    """A further training stage of the same model reports the whole cost: the card's data lists every
    stage (config, examples seen, GPU seconds, and the device it ran on, since stages may run on different
    GPUs while the card's top-level `device` names the last) and its totals add them up. Stages off the GPU
    (None seconds) are not mixed with GPU ones."""
    earlier = continued_card(init_from, export_id, run_dir)
    if earlier is None or seconds is None or earlier.train_gpu_seconds is None:
        return data, seconds
    seen = next((k for k in SEEN_KEYS if k in data), None)
    stage = {"config": run_dir, "train_gpu_seconds": seconds, **({seen: data[seen]} if seen else {})}
    stage |= {k: data[k] for k in RUN_KEYS if k in data}
    if device:
        stage["device"] = device
    if "stages" in earlier.data:
        stages = [dict(s) for s in earlier.data["stages"]]
        # a card written before stage entries kept their run's record still holds it at its top level
        stages[-1] |= {k: earlier.data[k] for k in RUN_KEYS if k in earlier.data and k not in stages[-1]}
    else:
        first = {k: v for k, v in earlier.data.items() if k != "stages"} | {"train_gpu_seconds": earlier.train_gpu_seconds}
        if earlier.device:
            first["device"] = earlier.device  # a one-stage model's card names its device at the top level
        stages = [first]
    if earlier.id != export_id:
        stages[-1].setdefault("model", earlier.id)  # the student this one was fine-tuned from
    data = {**data, "stages": [*stages, stage]}
    if seen:
        data[seen] += earlier.data.get(seen, 0)
    return data, round(seconds + earlier.train_gpu_seconds, 1)
