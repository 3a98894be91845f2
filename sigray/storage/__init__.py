"""Where stores live: one contract (``base.Storage``), a backend per kind of storage."""

from sigray.storage.base import CLIENT_ENV_PREFIXES, Storage, client_env, open_storage

__all__ = ["CLIENT_ENV_PREFIXES", "Storage", "client_env", "open_storage"]
