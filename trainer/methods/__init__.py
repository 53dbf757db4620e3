"""Method registry: name -> lazily imported class. The app and CLI boot without importing them."""

from __future__ import annotations

import importlib

from trainer.config import ConfigError

METHODS: dict[str, str] = {
    "flow_matching": "trainer.methods.flow_matching:FlowMatching",
}


def method_class(name: str):
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)
