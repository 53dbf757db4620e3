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
from engines.text_encoder import DEFAULT_MAX_TOKENS, TextEncoder

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
ENGINES: dict[str, str] = {
    "image": "engines.image:ImageEngine",
    "text": "engines.text:TextEngine",
    "video": "engines.video:VideoEngine",
}
NO_TEXT_ENCODER = ("text",)  # modalities that tokenise for themselves (no MiniLM)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Registry:
    def __init__(self, roots: list[str | Path] | None = None, device: str = "auto", cache_size: int = 2) -> None:
        self.roots = [Path(r) for r in (roots if roots is not None else [DEFAULT_ROOT])]
        self.device: torch.device = pick_device(device)
        self.cache_size = max(1, cache_size)
        self._cards: dict[str, ModelCard] = {}
        self._extra: list[Path] = []
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
        candidates = [p for root in self.roots if root.is_dir() for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()]
        for directory in candidates + self._extra:
            try:
                card = load_card(directory) if (directory / CARD_FILE).is_file() else _external_card(directory)
            except CheckpointError as err:
                problems[str(directory)] = str(err)
                continue
            if card.id in cards and cards[card.id].path != card.path:
                problems[str(directory)] = f"duplicate model id {card.id!r} (also at {cards[card.id].path}); skipped"
                continue
            cards[card.id] = card
        with self._lock:
            self._cards, self.problems = cards, problems

    def add(self, source: str | Path) -> ModelCard:
        """Add a checkpoint directory. Hub ids need network access, which these machines lack."""
        path = Path(source).expanduser()
        if not path.exists():
            if isinstance(source, str) and _HUB_ID.match(source):
                raise CheckpointError(
                    f"{source!r} looks like a Hugging Face hub id, but it is not available offline: download it on a "
                    "machine with network access (huggingface-cli download) and add the local directory instead"
                )
            raise CheckpointError(f"no checkpoint directory at {path}")
        card = load_card(path) if (path / CARD_FILE).is_file() or not (path / "config.json").is_file() else _external_card(path)
        with self._lock:
            if path not in self._extra:
                self._extra.append(path)
        self.refresh()
        if card.id not in self._cards:
            raise CheckpointError(self.problems.get(str(path), f"could not add {path}"))
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
            if card.modality not in ENGINES:
                raise BackendUnavailable(f"no engine for modality {card.modality!r} yet (model {model_id!r})")
            module, attr = ENGINES[card.modality].split(":")
            engine_cls = getattr(importlib.import_module(module), attr)
            encoder = None if card.modality in NO_TEXT_ENCODER else self.text_encoder(card.text_encoder)
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


def _external_card(path: Path) -> ModelCard:
    """A public checkpoint without a Distillery card: today, masked LMs (transformers) for the text engine."""
    from engines.text import external_card

    return external_card(path)
