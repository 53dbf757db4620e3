"""Training in stages: a run that continues a model reports the model's whole training, not just its
last stage. It continues one when init_from is a checkpoint under the export's id (a further stage), or
another student (a student fine-tuned from a student, e.g. a one-step specialist of a 1/2/4-step one,
cost both runs); a student started from its teacher reports its own cost, the teacher's card its own."""

from __future__ import annotations

from engines.card import ModelCard, load_card

SEEN_KEYS = ("images_seen", "clips_seen", "sequences_seen")
# what a run records about itself at its card's top level; its stage entry keeps a copy, because the next stage's
# run replaces the top level (session 24: a third stage's card had lost the second's ODE-pair set)
RUN_KEYS = ("init_from", "ode_pairs", "stage")


def continued_card(init_from: str | None, export_id: str) -> ModelCard | None:
    """The card of the model this run continues: one under the same id (a further training stage) or
    another student; else None (a fresh model, or a student started from its teacher)."""
    if not init_from:
        return None
    card = load_card(init_from)
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
    earlier = continued_card(init_from, export_id)
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
