"""The storage contract: whole objects by key under one root, and a zarr store over it.

A store (``sigray.store``) and its lease (``sigray.lease``) need only these operations, so
every backend is a thin file beside this one (``local.py``, ``object_store.py``) and one
behavioural suite (``tests/storage_contract.py``) runs against each. The guarantees:

- ``write`` replaces an object whole: a reader sees the old bytes or the new, never a mix;
- ``create_exclusive`` succeeds for exactly one of any number of concurrent callers;
- ``list`` names every object under a prefix, ``remove_prefix`` deletes them all;
- ``zarr_store`` is a zarr store over the same root whose chunk writes are whole too.

Keys are ``/``-separated and relative to the root. Paths stay strings: ``s3://`` URLs
do not survive ``pathlib``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from sigray.errors import StoreError

# Environment an object store client reads, passed on to the coordinator's process.
CLIENT_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "AZURE_")


class Storage(ABC):
    """One root (a local directory or an object store prefix) and what sigray does there."""

    url: str  # an absolute local path, or a URL without a trailing slash

    # -- objects ----------------------------------------------------------------

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` whole (creating folders as needed); readers never see a mix."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes = b"") -> bool:
        """Create ``key`` holding ``data``; False when it exists already (someone else created it).
        A create that fails (OSError: a full disk) leaves no ``key`` behind."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def remove(self, key: str) -> None:
        """Delete one object; nothing happens when it is absent."""

    @abstractmethod
    def age_s(self, key: str, now: float) -> float | None:
        """Seconds since ``key`` was last written; None when it does not exist."""

    # -- prefixes ---------------------------------------------------------------

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (recursively), sorted."""

    @abstractmethod
    def remove_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``; nothing happens when there is none."""

    def is_empty(self) -> bool:
        """Whether nothing at all is stored under the root yet."""
        return not self.list()

    # -- zarr -------------------------------------------------------------------

    @abstractmethod
    def zarr_store(self, read_only: bool = False):
        """A zarr store over the root (``zarr.open_group(store, path=...)`` reaches sub-groups)."""

    # -- hooks with a default -----------------------------------------------------

    def check_root(self) -> None:  # noqa: B027 - optional hook: only some backends have roots that can be wrong
        """Raise StoreError when the root cannot hold a store (e.g. it is a file)."""

    def remove_partial_writes(self) -> int:
        """Delete what interrupted writes left behind; returns how many. Backends whose
        writes are whole objects leave nothing."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def is_url(path: str) -> bool:
    return "://" in path


def open_storage(path: str | Storage) -> Storage:
    """The backend for ``path``: a local directory (a plain path or ``file://``) or an
    object store URL that fsspec knows (``s3://bucket/prefix``)."""
    if isinstance(path, Storage):
        return path
    if not path:
        raise StoreError("a store path is required.")
    if path.startswith("file://"):
        path = path[len("file://") :]
    if is_url(path):
        from sigray.storage.object_store import ObjectStorage

        return ObjectStorage(path)
    from sigray.storage.local import LocalStorage

    return LocalStorage(path)


def client_env() -> dict[str, str]:
    """The object-store client settings of this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(CLIENT_ENV_PREFIXES)}
