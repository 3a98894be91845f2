"""A store on an object store (``s3://bucket/prefix``, or any URL fsspec knows).

Every PUT is whole (a reader sees the old object or the new one), so writes need no
temporary names, and an exclusive create is a conditional PUT (``If-None-Match: *``).
Credentials and endpoints come from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ...), passed on to the coordinator.
"""

from __future__ import annotations

from sigray.errors import StoreError
from sigray.storage.base import Storage


class ObjectStorage(Storage):
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        try:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise StoreError(
                f"cannot reach store {self.url}: {exc}. For s3:// install the s3 extra (pip install 'sigray[s3]')."
            ) from None

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

    # -- objects ----------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        try:
            return self._fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        self._fs.pipe_file(self._path(key), data)

    def create_exclusive(self, key: str, data: bytes = b"") -> bool:
        # A conditional PUT of a non-empty body: s3fs commits an *empty* "xb" file with a
        # plain touch, which is not exclusive (found by the storage contract suite).
        try:
            self._fs.pipe_file(self._path(key), data or b"sigray", mode="create")
        except FileExistsError:
            return False
        return True

    def exists(self, key: str) -> bool:
        self._fs.invalidate_cache(self._path(key))
        return self._fs.isfile(self._path(key))

    def remove(self, key: str) -> None:
        try:
            self._fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def age_s(self, key: str, now: float) -> float | None:
        self._fs.invalidate_cache(self._path(key))
        try:
            modified = self._fs.info(self._path(key)).get("LastModified")
        except FileNotFoundError:
            return None
        return None if modified is None else now - modified.timestamp()

    # -- prefixes ---------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        top = self._path(prefix).rstrip("/")
        self._fs.invalidate_cache(top)
        try:
            found = self._fs.find(top)
        except FileNotFoundError:
            return []
        return sorted(path[len(self._root) + 1 :] for path in found if path.startswith(self._root + "/"))

    def remove_prefix(self, prefix: str) -> None:
        keys = [self._path(key) for key in self.list(prefix)]
        if keys:
            self._fs.rm(keys)

    # -- zarr -------------------------------------------------------------------

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, read_only=read_only)  # its own asynchronous client
