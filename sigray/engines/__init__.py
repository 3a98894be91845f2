"""LLM engines behind one contract (``base.Engine``), chosen by name or import path."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterable

from sigray.engines.base import Completion, Engine, ForeignEngine, Sampling
from sigray.errors import ConfigError

BUILTIN_ENGINES = {
    "vllm": "sigray.engines.vllm_engine:VllmEngine",
    "openai": "sigray.engines.openai_engine:OpenAIEngine",
    "test-double": "sigray.engines.test_double:TestDoubleEngine",
}

__all__ = [
    "BUILTIN_ENGINES",
    "Completion",
    "Engine",
    "Sampling",
    "check_ready",
    "engine_class",
    "load_engine",
    "rate_limits",
    "speed_options",
]


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


def speed_options(name: str) -> frozenset[str]:
    """The options of engine ``name`` that never change answers (see ``Engine.speed_options``)."""
    return frozenset(getattr(engine_class(name), "speed_options", ()))


def check_ready(name: str, model: str, options: dict, requests: Iterable[tuple[str, Sampling]] = ()) -> None:
    """ConfigError when engine ``name`` can tell, before any work, that it cannot serve ``model``
    (``Engine.check_ready``; a user's class may define it too), cannot take requests sampled as
    the first of ``requests`` (``Engine.check_requests``: the run's prompt format and answer
    constraint), or has room for none of the run's ``(prompt, sampling)`` ``requests`` in its
    context (``Engine.check_fits``). ``requests`` is read lazily, as far as the checks need."""
    cls = engine_class(name)
    check = getattr(cls, "check_ready", None)
    if callable(check):
        check(model, options)
    requests = iter(requests)
    first = next(requests, None)
    if first is None:
        return
    check = getattr(cls, "check_requests", None)
    if callable(check):
        check(model, options, first[1])
    check = getattr(cls, "check_fits", None)
    if callable(check):
        check(model, options, itertools.chain([first], requests))


def rate_limits(name: str, options: dict):
    """The run-wide rate limits engine ``name`` takes from ``options`` (``Engine.rate_limits``)."""
    from sigray.rate_limit import RateLimits

    limits = getattr(engine_class(name), "rate_limits", None)
    return limits(options) if callable(limits) else RateLimits()


def load_engine(name: str, model: str, options: dict) -> Engine:
    """Construct an engine; a user's class that does not derive from Engine is held to its
    contract through ``ForeignEngine`` and needs ``generate(prompts, samplings, seeds)``."""
    engine = engine_class(name)(model, **options)
    if isinstance(engine, Engine):
        return engine
    if not callable(getattr(engine, "generate", None)):
        raise ConfigError(f"engine {name!r} has no generate(prompts, samplings, seeds) method.")
    return ForeignEngine(engine)
