"""The registry: discovers checkpoints by their cards, loads engines lazily, caches a few.

Cards are read at start (cheap JSON); weights load on first use. Engine classes are named by
import path, so a modality whose extra packages are missing fails only where it is used.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from engines.card import CARD_FILE, ModelCard, load_card
from engines.devices import empty_cache, pick_device
from engines.errors import BackendUnavailable, CheckpointError
from engines.pipelines import PIPELINE_INDEX, pipeline_card  # light: the module imports diffusers only to load
from engines.text_encoder import DEFAULT_MAX_TOKENS, TextEncoder

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
# A card's engine: its `engine` field when set (e.g. "pipeline" for public diffusers pipelines), else its modality.
ENGINES: dict[str, str] = {
    "image": "engines.image:ImageEngine",
    "text": "engines.text:TextEngine",
    "video": "engines.video:VideoEngine",
    "pipeline": "engines.pipelines:PipelineEngine",
}
NO_TEXT_ENCODER = ("text", "pipeline")  # engines that tokenise for themselves (no MiniLM)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Registry:
    def __init__(self, roots: list[str | Path] | None = None, device: str = "auto", cache_size: int = 2) -> None:
        self.roots = [Path(r) for r in (roots if roots is not None else [DEFAULT_ROOT])]
        self.device: torch.device = pick_device(device)
        self.cache_size = max(1, cache_size)
        self._cards: dict[str, ModelCard] = {}
        self._extra: list[tuple[Path, Path | None]] = []  # added directories, each with its LoRA (or None)
        self.problems: dict[str, str] = {}  # path -> why it was skipped
        self._engines: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._text_encoders: dict[tuple, TextEncoder] = {}
        self._lock = threading.RLock()
        self.refresh()

    # ------------------------------------------------------------------ discovery
    def refresh(self) -> None:
        """Rescan the roots (and added directories). A bad card is reported, never fatal."""
        cards: dict[str, ModelCard] = {}
        problems: dict[str, str] = {}
        candidates = [
            (p, None)
            for root in self.roots
            if root.is_dir()
            for p in sorted(root.iterdir())
            if (p / CARD_FILE).is_file() or (p / PIPELINE_INDEX).is_file()
        ]
        for directory, lora in candidates + self._extra:
            try:
                card = read_card(directory, lora)
            except CheckpointError as err:
                problems[_where(directory, lora)] = str(err)
                continue
            if card.id in cards and cards[card.id].path != card.path:
                problems[_where(directory, lora)] = f"duplicate model id {card.id!r} (also at {cards[card.id].path}); skipped"
                continue
            cards[card.id] = card
        with self._lock:
            self._cards, self.problems = cards, problems

    def add(self, source: str | Path, lora: str | Path | None = None) -> ModelCard:
        """Add a checkpoint directory: ours (card.json), a public diffusers pipeline (model_index.json; with
        `lora`, that pipeline plus a LoRA such as LCM-LoRA) or a public masked LM. Hub ids need network
        access, which these machines lack."""
        path = _local(source, "checkpoint directory")
        lora_path = _local(lora, "LoRA directory") if lora is not None else None
        card = read_card(path, lora_path)
        with self._lock:
            if (path, lora_path) not in self._extra:
                self._extra.append((path, lora_path))
        self.refresh()
        if card.id not in self._cards:
            raise CheckpointError(self.problems.get(_where(path, lora_path), f"could not add {path}"))
        return card

    def cards(self, modality: str | None = None) -> list[ModelCard]:
        with self._lock:
            found = list(self._cards.values())
        return [c for c in found if modality is None or c.modality == modality]

    def card(self, model_id: str) -> ModelCard:
        with self._lock:
            if model_id in self._cards:
                return self._cards[model_id]
            known = ", ".join(sorted(self._cards)) or "none"
        raise CheckpointError(f"unknown model id {model_id!r}; known: {known}")

    def default(self, modality: str) -> ModelCard:
        """The default model of a modality: a student if any (fastest), else a teacher."""
        found = self.cards(modality)
        if not found:
            raise CheckpointError(f"no {modality} checkpoints found in {', '.join(map(str, self.roots))}")
        return sorted(found, key=lambda c: (c.role != "student", c.default_steps, c.id))[0]

    # ------------------------------------------------------------------ loading
    def text_encoder(self, spec: dict) -> TextEncoder:
        source = spec.get("path") or spec.get("package")
        key = (source, int(spec.get("max_tokens", DEFAULT_MAX_TOKENS)))
        with self._lock:
            if key not in self._text_encoders:
                self._text_encoders[key] = TextEncoder(source, device=self.device, max_tokens=key[1])
            return self._text_encoders[key]

    def engine(self, model_id: str, backend: str = "torch"):
        """The loaded engine for a model (LRU-cached; the least recently used is unloaded)."""
        card = self.card(model_id)
        key = (model_id, backend)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            kind = card.engine or card.modality
            if kind not in ENGINES:
                if card.engine:
                    known = ", ".join(sorted(ENGINES))
                    raise BackendUnavailable(f"model {model_id!r} names engine {card.engine!r}, which is unknown; known: {known}")
                raise BackendUnavailable(f"no engine for modality {card.modality!r} yet (model {model_id!r})")
            module, attr = ENGINES[kind].split(":")
            engine_cls = getattr(importlib.import_module(module), attr)
            encoder = None if kind in NO_TEXT_ENCODER else self.text_encoder(card.text_encoder)
            engine = engine_cls.from_card(card, self.device, encoder, backend=backend)
            self._engines[key] = engine
            while len(self._engines) > self.cache_size:
                _, old = self._engines.popitem(last=False)
                old.unload()
                empty_cache(self.device)
            return engine

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._engines)

    def unload_all(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.unload()
            self._engines.clear()
        empty_cache(self.device)


def _local(source: str | Path, what: str) -> Path:
    """An existing local path; a hub-id-looking string that is not one gets the offline message."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, str) and _HUB_ID.match(source):
        raise CheckpointError(
            f"{source!r} looks like a Hugging Face hub id, but it is not available offline: download it on a "
            "machine with network access (huggingface-cli download) and add the local directory instead"
        )
    raise CheckpointError(f"no {what} at {path}")


def _where(directory: Path, lora: Path | None) -> str:
    """The key of a skipped entry in `problems`: its directory, and its LoRA when it has one."""
    return str(directory) if lora is None else f"{directory} + LoRA {lora}"


def read_card(directory: Path, lora: Path | None = None) -> ModelCard:
    """A directory's card: card.json when it has one, else one made from a public layout's own configs
    (a diffusers pipeline, or a masked LM for the text engine)."""
    if lora is None and (directory / CARD_FILE).is_file():
        return load_card(directory)
    if (directory / PIPELINE_INDEX).is_file():
        return pipeline_card(directory, lora)
    if lora is not None:
        raise CheckpointError(
            f"a LoRA applies to a diffusers pipeline (a directory with {PIPELINE_INDEX}); {directory} is not one"
        )
    if (directory / "config.json").is_file():
        from engines.text import external_card

        return external_card(directory)
    return load_card(directory)  # says what is missing
