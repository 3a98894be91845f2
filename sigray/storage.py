"""Where a store lives: a local directory, or an object store URL (``s3://bucket/prefix``).

The store and its lease need few operations of the storage: whole-object reads and
writes, an exclusive create, a listing check, and a zarr store. Locally, writes go to
a temporary file renamed into place; on an object store every PUT is already whole
(a reader sees the old object or the new one), and an exclusive create is a
conditional PUT (``If-None-Match: *``, via fsspec's ``"xb"`` mode). Object stores are
reached through fsspec (``s3fs`` for S3) with the usual environment for credentials
and endpoints (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
import uuid

from sigray.errors import StoreError

# Environment an object store client reads, passed on to the coordinator's process.
CLIENT_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "AZURE_")


def is_url(path: str) -> bool:
    return "://" in path


def normalize(path: str) -> str:
    """An absolute local path, or the URL without a trailing slash."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def client_env() -> dict[str, str]:
    """The object-store client settings of this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(CLIENT_ENV_PREFIXES)}


class Location:
    """One store's root, local or remote, and the few operations sigray needs there."""

    def __init__(self, path: str):
        self.path = normalize(path)
        self.remote = is_url(self.path)
        self._fs = None
        if self.remote:
            try:
                import fsspec

                self._fs, self._root = fsspec.core.url_to_fs(self.path)
            except (ImportError, ValueError) as exc:
                raise StoreError(
                    f"cannot reach store {self.path}: {exc}. For s3:// install the s3 extra (pip install 'sigray[s3]')."
                ) from None
        else:
            self._root = self.path

    def join(self, name: str) -> str:
        return f"{self._root}/{name}" if self.remote else os.path.join(self._root, name)

    # -- the root ----------------------------------------------------------

    def is_file(self) -> bool:
        return not self.remote and os.path.exists(self.path) and not os.path.isdir(self.path)

    def holds(self, name: str) -> bool:
        """Whether the object (or file) ``name`` exists under the root."""
        if self.remote:
            return self._fs.exists(self.join(name))
        return os.path.exists(self.join(name))

    def occupied(self) -> bool:
        """Whether something is already here: a non-empty directory, or a store's metadata object
        (an object prefix without it is a half-created store, created again)."""
        if self.remote:
            return self.holds("zarr.json")
        return os.path.isdir(self.path) and bool(os.listdir(self.path))

    def zarr_store(self, read_only: bool = False):
        """zarr's LocalStore (atomic temp + rename writes) or FsspecStore (whole-object PUTs)."""
        if self.remote:
            from zarr.storage import FsspecStore

            return FsspecStore.from_url(self.path, read_only=read_only)  # its own asynchronous client
        from zarr.storage import LocalStore

        return LocalStore(self.path, read_only=read_only)

    def remove_tree(self) -> None:
        if self.remote:
            if self._fs.exists(self._root):
                self._fs.rm(self._root, recursive=True)
            return
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)

    # -- small objects (the lease) --------------------------------------------

    def read(self, name: str) -> bytes | None:
        try:
            if self.remote:
                return self._fs.cat_file(self.join(name))
            with open(self.join(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Replace ``name`` whole: readers see the old content or the new, never a mix."""
        if self.remote:
            self._fs.pipe_file(self.join(name), data)
            return
        tmp = self.join(f".{name}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.join(name))

    def create_exclusive(self, name: str) -> bool:
        """Create an empty ``name``; False when it already exists (someone else created it)."""
        try:
            if self.remote:
                with self._fs.open(self.join(name), "xb"):
                    pass
            else:
                os.close(os.open(self.join(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def remove(self, name: str) -> None:
        try:
            if self.remote:
                self._fs.rm_file(self.join(name))
            else:
                os.remove(self.join(name))
        except FileNotFoundError:
            pass

    def age_s(self, name: str, now: float) -> float | None:
        """Seconds since ``name`` was last written, None when it does not exist."""
        try:
            if self.remote:
                modified = self._fs.info(self.join(name)).get("LastModified")
                return None if modified is None else now - modified.timestamp()
            return now - os.path.getmtime(self.join(name))
        except FileNotFoundError:
            return None
