"""sigray: resumable, fault-tolerant SigLLM anomaly detection on Ray with vLLM."""

from sigray.api import run
from sigray.config import RunConfig
from sigray.errors import (
    ConfigError,
    ConfigMismatchError,
    InputError,
    ModelNotFoundError,
    SigrayError,
    StoreError,
    StoreLockedError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConfigMismatchError",
    "InputError",
    "ModelNotFoundError",
    "RunConfig",
    "SigrayError",
    "StoreError",
    "StoreLockedError",
    "run",
]
