"""A store in a local (or shared: NFS, Lustre, EFS) directory.

Writes go to a temporary file that is renamed into place (``os.replace`` is atomic on
POSIX), and zarr's ``LocalStore`` does the same for chunks; an interrupted write leaves
at most a temporary file, which ``remove_partial_writes`` deletes.
"""

from __future__ import annotations

import os
import shutil
import uuid

from sigray.errors import StoreError
from sigray.storage.base import Storage

_TEMP_MARK = ".sigray-tmp-"
_ZARR_PARTIAL = ".partial"  # zarr LocalStore's temporary file: <chunk>.<uuid>.partial


class LocalStorage(Storage):
    def __init__(self, path: str):
        self.url = os.path.abspath(path)

    def _path(self, key: str) -> str:
        return os.path.join(self.url, *key.split("/")) if key else self.url

    # -- objects ----------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f"{_TEMP_MARK}{os.path.basename(path)}.{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

    def create_exclusive(self, key: str, data: bytes = b"") -> bool:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        try:
            try:
                os.write(fd, data)  # a reader may see it empty for a moment: its content is a hint only
            finally:
                os.close(fd)  # NFS may say a disk is full only here
        except BaseException:  # undo the create, or it would stand taken with no holder named
            _unlink(path)
            raise
        return True

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def remove(self, key: str) -> None:
        _unlink(self._path(key))

    def age_s(self, key: str, now: float) -> float | None:
        try:
            return now - os.path.getmtime(self._path(key))
        except FileNotFoundError:
            return None

    # -- prefixes ---------------------------------------------------------------

    def list(self, prefix: str = "") -> list[str]:
        top = self._path(prefix)
        if os.path.isfile(top):
            return [prefix]
        keys = []
        for folder, _, names in os.walk(top):
            relative = os.path.relpath(folder, self.url).replace(os.sep, "/")
            keys.extend(name if relative == "." else f"{relative}/{name}" for name in names)
        return sorted(keys)

    def remove_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _unlink(path)

    def is_empty(self) -> bool:
        return not os.path.isdir(self.url) or not os.listdir(self.url)

    # -- zarr -------------------------------------------------------------------

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import LocalStore

        return LocalStore(self.url, read_only=read_only)

    # -- hooks ------------------------------------------------------------------

    def check_root(self) -> None:
        if os.path.exists(self.url) and not os.path.isdir(self.url):
            raise StoreError(f"store path {self.url} is a file, not a directory; choose another --store.")

    def remove_partial_writes(self) -> int:
        removed = 0
        for folder, _, names in os.walk(self.url):
            for name in names:
                if name.endswith(_ZARR_PARTIAL) or name.startswith(_TEMP_MARK):
                    _unlink(os.path.join(folder, name))
                    removed += 1
        return removed


def _unlink(path: str) -> None:
    try:
        os.remove(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
