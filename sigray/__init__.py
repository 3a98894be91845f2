"""sigray: resumable, fault-tolerant SigLLM anomaly detection on Ray with vLLM.

The public names are imported when first used (PEP 562): a process that needs one small
module (the lease keeper, ``sigray.lease_keeper``) does not load pandas, zarr and sigllm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sigray.errors import (
    ConfigError,
    ConfigMismatchError,
    InputError,
    ModelNotFoundError,
    SigrayError,
    SigrayWarning,
    StoreError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from sigray.api import detect, run
    from sigray.config import RunConfig
    from sigray.dropin import SigLLM
    from sigray.reader import open_store as open  # noqa: A004 - sigray.open, as zarr.open

__version__ = "0.1.0"

_LAZY = {
    "run": ("sigray.api", "run"),
    "detect": ("sigray.api", "detect"),
    "RunConfig": ("sigray.config", "RunConfig"),
    "SigLLM": ("sigray.dropin", "SigLLM"),
    "open": ("sigray.reader", "open_store"),
}

__all__ = [
    "ConfigError",
    "ConfigMismatchError",
    "InputError",
    "ModelNotFoundError",
    "RunConfig",
    "SigLLM",
    "SigrayError",
    "SigrayWarning",
    "StoreError",
    "StoreLockedError",
    "detect",
    "open",
    "run",
]


def __getattr__(name: str):
    """A public name, or a submodule (``sigray.reader``), imported on first use."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
