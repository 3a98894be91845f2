"""LLM engines behind one protocol, chosen by name or import path."""

from __future__ import annotations

import importlib

from sigray.engines.base import Engine, Sampling
from sigray.errors import ConfigError

BUILTIN_ENGINES = {
    "vllm": "sigray.engines.vllm_engine:VllmEngine",
    "test-double": "sigray.engines.test_double:TestDoubleEngine",
}

__all__ = ["BUILTIN_ENGINES", "Engine", "Sampling", "engine_class", "load_engine"]


def engine_class(name: str) -> type:
    """The class for ``vllm``, ``test-double`` or a ``package.module:Class`` import path."""
    path = BUILTIN_ENGINES.get(name, name)
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ConfigError(f"unknown engine {name!r}; use one of {sorted(BUILTIN_ENGINES)} or 'package.module:Class'.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import engine {name!r} ({exc}).") from None


def load_engine(name: str, model: str, options: dict) -> Engine:
    """Construct an engine; it must have ``generate(prompts, sampling, seeds)``."""
    engine = engine_class(name)(model, **options)
    if not callable(getattr(engine, "generate", None)):
        raise ConfigError(f"engine {name!r} has no generate(prompts, sampling, seeds) method.")
    return engine
