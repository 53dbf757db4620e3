"""Model cards: what a checkpoint is, read from `card.json` without loading any weights."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.errors import CheckpointError

MODALITIES = ("image", "video", "3d", "edit", "text")
ROLES = ("teacher", "student")
CARD_FILE = "card.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ModelCard:
    id: str
    modality: str
    role: str
    method: str
    default_steps: int
    resolution: int
    path: Path | None = None
    teacher: str | None = None
    default_guidance: float = 1.0
    data: dict[str, Any] = field(default_factory=dict)
    train_gpu_seconds: float | None = None
    device: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)  # text: the shipped decoder's settings and canvas
    engine: str | None = None  # the engine that loads it, by registry name; None: the modality's own
    pipeline: dict[str, Any] = field(default_factory=dict)  # a public diffusers pipeline: its class, LoRA path

    def __post_init__(self) -> None:
        where = f" in {self.path / CARD_FILE}" if self.path else ""
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise CheckpointError(f"card id {self.id!r}{where} must be 1-100 letters, digits, '.', '_' or '-'")
        if self.modality not in MODALITIES:
            raise CheckpointError(
                f"card {self.id!r}{where} names modality {self.modality!r}; known modalities: {', '.join(MODALITIES)}"
            )
        if self.engine is not None and (not isinstance(self.engine, str) or not self.engine):
            raise CheckpointError(f"card {self.id!r}{where}: engine must be an engine name or null, got {self.engine!r}")
        if self.role not in ROLES:
            raise CheckpointError(f"card {self.id!r}{where} names role {self.role!r}; use teacher or student")
        for name in ("default_steps", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"card {self.id!r}{where}: {name} must be a positive integer, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / CARD_FILE
        target.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return target


def read_json(directory: Path, name: str) -> dict[str, Any]:
    """A checkpoint's JSON file (card or config) as a dict, or a CheckpointError saying what is wrong."""
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {name}: the checkpoint is incomplete (re-export or re-download it)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def load_card(directory: str | Path) -> ModelCard:
    """Read and validate `<directory>/card.json`."""
    directory = Path(directory)
    path = directory / CARD_FILE
    raw = read_json(directory, CARD_FILE)
    known = {f.name for f in fields(ModelCard)} - {"path"}
    missing = [name for name in ("id", "modality", "role", "method", "default_steps", "resolution") if name not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks required field(s): {', '.join(missing)}")
    # Unknown keys are kept out of the dataclass but tolerated: newer cards may carry more.
    return ModelCard(path=directory, **{k: v for k, v in raw.items() if k in known})
