"""Replacing a store (``--new``) and migrating one (format 1 -> 2) destroy nothing they should not.

A live run's store is never replaced. A SIGKILL at any step of a replacement or a migration
leaves the old store or a whole new one, never neither, and the same command then finishes.
On an object store ``--new`` replaces the store too, through the same storage layer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sigray
from sigray import lease
from sigray.cli import main as cli
from sigray.reader import open_store
from sigray.store import DONE, RunStore
from tests.conftest import FORMAT1, ROOT

SIGNAL = os.path.join(FORMAT1, "art_load_balancer_spikes.csv")
HOURLY = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"

ANSWERED = 8  # windows the partial format-1 store holds answers for


def _prepare(store: str, kill_at: int, new: bool) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tests.crash_during_prepare", store, SIGNAL, str(kill_at)] + (
        ["--new"] if new else []
    )
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _files(store: str) -> dict[str, bytes]:
    found = {}
    for folder, _, names in os.walk(store):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), store)] = f.read()
    return found


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> str:
    """The partial format-1 store, migrated (format 2, 8 windows answered): what --new replaces."""
    store = str(tmp_path_factory.mktemp("migrated") / "store")
    shutil.copytree(os.path.join(FORMAT1, "partial"), store)
    done = _prepare(store, -1, new=False)
    assert done.returncode == 0, done.stderr
    return store


def _steps(store: str, tmp_path, new: bool) -> tuple[int, int]:
    """(steps, the step that writes the pointer) of preparing a copy of ``store``."""
    trial = str(tmp_path / "trial")
    shutil.copytree(store, trial)
    done = _prepare(trial, -1, new)
    assert done.returncode == 0, done.stderr
    pointer = int(re.findall(r"pointer (\d+)", done.stdout)[-1])
    return int(re.search(r"steps (\d+)", done.stdout).group(1)), pointer


def _kill_points(steps: int, pointer: int) -> list[int]:
    """Just before and just after the pointer moves, and six more spread over all steps."""
    return sorted({pointer, pointer + 1} | {int(k) for k in np.linspace(1, steps, 6)})


def _answered(store: str) -> int:
    reader = open_store(store)
    return reader.status()["done"]


@pytest.mark.extended
@pytest.mark.parametrize("mode", ["--new", "migration"])
def test_a_sigkill_at_any_step_leaves_the_old_store_or_a_whole_new_one(tmp_path, migrated, mode):
    new = mode == "--new"
    source = migrated if new else os.path.join(FORMAT1, "partial")
    old_fingerprint = open_store(source).fingerprint
    steps, pointer = _steps(source, tmp_path, new)
    for kill_at in _kill_points(steps, pointer):
        store = str(tmp_path / f"killed-at-{kill_at}")
        shutil.copytree(source, store)
        killed = _prepare(store, kill_at, new)
        assert killed.returncode == -9, (kill_at, killed.stdout, killed.stderr)
        reader = open_store(store)  # whatever the moment, a store sigray reads
        if reader.fingerprint == old_fingerprint:  # the old one, whole
            assert _answered(store) == ANSWERED, kill_at
        else:  # the new one: empty after --new, holding the migrated answers after a migration
            assert kill_at > pointer, "nothing but the pointer makes a new store live"
            assert reader.format_version == 2 and _answered(store) == (0 if new else ANSWERED), kill_at
        finished = _prepare(store, -1, new)  # the same command again finishes the job
        assert finished.returncode == 0, (kill_at, finished.stderr)
        assert open_store(store).format_version == 2
        live = RunStore.open(store)
        left = sorted({key.split("/")[0] for key in live.storage.list()})
        assert left == sorted([live.generation, "zarr.json"]), (kill_at, left)  # no stale generation


def test_new_on_a_store_a_live_run_holds_is_refused_and_changes_nothing(tmp_path, migrated, capsys):
    store = str(tmp_path / "store")
    shutil.copytree(migrated, store)
    lease.acquire(store, "a-live-run", ttl_s=60, renew_every_s=1)  # held by this (live) process
    before = _files(store)
    args = ["run", SIGNAL, "--store", store, "--engine", "test-double", "--new", "--param", f"{HOURLY}.interval=3600"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and "Traceback" not in err
    assert _files(store) == before


@pytest.mark.extended  # the replacement on S3 itself is in the storage contract (default suite)
def test_new_replaces_a_store_on_s3(ray_session, s3_bucket):
    store = f"{s3_bucket}/replace"
    fast = {
        "engine": "test-double",
        "flush_interval_s": 0.3,
        "batch_size": 32,
        "pipeline_params": {HOURLY: {"interval": 3600}},
    }
    first = sigray.run([SIGNAL], store, **fast)
    with pytest.raises(sigray.ConfigMismatchError, match="or --new to start over"):
        sigray.run([SIGNAL], store, seed=1, **fast)
    old = RunStore.open(store).generation
    replaced = sigray.run([SIGNAL], store, seed=1, new=True, **fast)
    assert replaced.computed_windows == replaced.total_windows == first.total_windows
    live = RunStore.open(store)
    assert live.generation != old and not [k for k in live.storage.list() if k.startswith(old)]
    status, _ = RunStore.open(store).read_state()
    assert (status == DONE).all()
