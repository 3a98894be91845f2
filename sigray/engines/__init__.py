"""LLM engines behind one contract (``base.Engine``), chosen by name or import path."""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import types
import typing
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
    "check_options",
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
    check_options(name, options)
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


# Options users guess that an engine takes under another name.
_INSTEAD = {"api_key": "api_key_env (the name of the environment variable that holds the key)"}


def check_options(name: str, options: dict) -> None:
    """ConfigError for an option engine ``name``'s constructor does not take (unless it takes
    any: vLLM passes them on to ``vllm.LLM``), or a value not of its annotated type (int,
    float, bool, str, or None where allowed). Options reach workers as keyword arguments,
    where a wrong one would fail every worker after the store was made."""
    cls = engine_class(name)
    try:
        signature = inspect.signature(cls.__init__)
        hints = typing.get_type_hints(cls.__init__)
    except (TypeError, ValueError, NameError):  # a user's class we cannot introspect: its own errors then
        return
    takes = {
        n: p for n, p in list(signature.parameters.items())[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        for option in sorted(set(options) - set(takes)):
            instead = _INSTEAD.get(option) or ", ".join(difflib.get_close_matches(option, takes, n=1))
            hint = f" (did you mean {instead}?)" if instead else ""
            raise ConfigError(
                f"engine {name!r} takes no option {option!r}{hint}; its options: {', '.join(takes) or 'none'}."
            )
    for option, value in options.items():
        allowed = _simple_types(hints.get(option))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"engine option {option}={value!r} must be {expected}.")


def _simple_types(hint) -> tuple[type, ...]:
    """The types a value of ``hint`` may have when it is int, float, bool, str or an optional
    of them (an int is a float, as in JSON); () when the hint is anything else."""
    members = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if not all(m in (int, float, bool, str, type(None)) for m in members):
        return ()
    return tuple(members) + ((int,) if float in members and int not in members else ())


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
