"""sigray: resumable, fault-tolerant SigLLM anomaly detection on Ray with vLLM."""

from sigray.api import detect, run
from sigray.config import RunConfig
from sigray.dropin import SigLLM
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
from sigray.reader import open_store as open

__version__ = "0.1.0"

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
