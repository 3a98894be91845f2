"""The storage contract on every backend: a local directory and an S3 object store (moto's server)."""

from __future__ import annotations

import os
import uuid

import pytest

from sigray.errors import StoreError
from sigray.storage import open_storage
from sigray.storage.local import LocalStorage
from sigray.storage.object_store import ObjectStorage
from tests.storage_contract import RawAccess, StorageContract


class _Files(RawAccess):
    def __init__(self, root: str):
        self.root = root

    def get(self, key):
        path = os.path.join(self.root, key)
        return open(path, "rb").read() if os.path.exists(path) else None

    def put(self, key, data):
        path = os.path.join(self.root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


class _Objects(RawAccess):
    def __init__(self, url: str):
        import fsspec

        self.fs = fsspec.filesystem("s3", skip_instance_cache=True)
        self.root = url.removeprefix("s3://")

    def get(self, key):
        try:
            return self.fs.cat_file(f"{self.root}/{key}")
        except FileNotFoundError:
            return None

    def put(self, key, data):
        self.fs.pipe_file(f"{self.root}/{key}", data)


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return open_storage(str(tmp_path / "store"))

    @pytest.fixture
    def raw(self, storage):
        return _Files(storage.url)

    def test_interrupted_writes_leave_temporary_files_that_are_cleaned_up(self, storage, raw):
        raw.put("g-1/windows/status/c/0.0123456789abcdef.partial", b"half a chunk")
        raw.put("g-1/.sigray-tmp-zarr.json.0123", b"half")
        raw.put("g-1/windows/status/c/0", b"whole")
        assert storage.remove_partial_writes() == 2
        assert storage.list() == ["g-1/windows/status/c/0"]

    def test_a_file_where_the_store_should_be_is_refused(self, tmp_path):
        (tmp_path / "file").write_text("x")
        with pytest.raises(StoreError, match="is a file, not a directory"):
            open_storage(str(tmp_path / "file")).check_root()


class TestObjectStorage(StorageContract):
    @pytest.fixture
    def storage(self, s3_bucket):
        return open_storage(f"{s3_bucket}/contract-{uuid.uuid4().hex[:8]}")

    @pytest.fixture
    def raw(self, storage):
        return _Objects(storage.url)


def test_paths_and_urls_pick_their_backend(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert open_storage(f"file://{tmp_path}/x").url == f"{tmp_path}/x"  # file:// is a local directory
    assert open_storage("relative/dir").url == os.path.abspath("relative/dir")
    assert isinstance(open_storage("s3://bucket/prefix/"), ObjectStorage)
    assert open_storage("s3://bucket/prefix/").url == "s3://bucket/prefix"
