"""A damaged store costs recomputation of the damaged chunks only: never a crash, never
wrong data. A full disk stops the run with a clear error and a readable store; a rerun
after freeing space resumes. A store from a newer sigray is refused, untouched."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from tests.conftest import generation_dir, prepare_without_engine

NAME = "cpu_utilization_asg_misconfiguration"
FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 8, "chunk_windows": 32}  # 111 windows: 4 chunks


def _generated_windows(log: str, prompts: list[str]) -> collections.Counter:
    window_of = {_digest(p): w for w, p in enumerate(prompts)}
    with open(log) as f:
        return collections.Counter(window_of[line.split()[0]] for line in f)


def _files(store: str) -> dict[str, str]:
    found = {}
    for root, _, names in os.walk(store):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, store)] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_damaged_chunks_are_recomputed_and_nothing_else(ray_session, cpu_signal, tmp_path):
    store, log = str(tmp_path / "run"), str(tmp_path / "generated.log")
    first = sigray.run([cpu_signal], store, **FAST)
    answers_before = RunStore.open(store).read_answers()

    # A truncated answers chunk, a garbage status chunk, a missing values chunk, a stale temp file.
    windows = os.path.join(generation_dir(store), "windows")
    chunk_file = os.path.join(windows, "answers", "c", "1", "0")
    with open(chunk_file, "r+b") as f:
        f.truncate(os.path.getsize(chunk_file) // 2)
    with open(os.path.join(windows, "status", "c", "2"), "wb") as f:
        f.write(os.urandom(64))
    os.unlink(os.path.join(windows, "values", "c", "3", "0", "0"))
    stale = os.path.join(windows, "answers", "c", "0", "0.0123456789abcdef.partial")
    with open(stale, "wb") as f:
        f.write(b"half a chunk")

    with pytest.raises(sigray.StoreError, match="cannot read 'windows/answers'"):
        RunStore.open(store, read_only=True).read_answers()  # readers see the damage; they never guess

    second = sigray.run([cpu_signal], store, **FAST, engine_options={"log_path": log})
    generated = _generated_windows(log, RunStore.open(store).read_prompts())
    assert set(generated) == set(range(32, 111)), "exactly the windows of the three damaged chunks"
    assert max(generated.values()) == 1
    assert second.computed_windows == 111 - 32 and second.resumed_windows == 32
    assert not os.path.exists(stale)
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    assert (RunStore.open(store).read_answers() == answers_before).all()
    pd.testing.assert_frame_equal(second.anomalies[NAME], first.anomalies[NAME])


@pytest.mark.parametrize("array", ["prompt", "key", "max_tokens"])
def test_damaged_requests_are_rewritten_from_the_plan(ray_session, cpu_signal, tmp_path, array):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    before = RunStore.open(store).read_requests()
    with open(
        os.path.join(generation_dir(store), "windows", array, "c", "0", *(["0"] if array == "key" else [])), "wb"
    ) as f:
        f.write(b"\x28\xb5\x2f\xfd garbage")
    result = sigray.run([cpu_signal], store, **FAST)
    assert result.computed_windows == 0
    assert RunStore.open(store).read_requests() == before


def test_requests_that_decode_but_do_not_match_their_keys_are_rewritten_from_the_plan(
    ray_session, cpu_signal, tmp_path
):
    """A silently changed prompt or limit of a pending window (in a chunk that still decodes) is caught
    by its key, a hash of the request: the window is asked as planned, never as changed."""
    from sigray.store import PENDING

    store, log = str(tmp_path / "run"), str(tmp_path / "generated.log")
    sigray.run([cpu_signal], store, **FAST)
    live = RunStore.open(store, read_only=False)
    before, answers_before = live.read_requests(), live.read_answers()
    live.group["windows/prompt"][40] = "1,2,3"
    live.group["windows/max_tokens"][70] = 1
    for row in (40, 70):  # never asked: the changed request would be sent
        live.group["windows/status"][row], live.group["windows/attempts"][row] = PENDING, 0
    result = sigray.run([cpu_signal], store, **FAST, engine_options={"log_path": log})
    with open(log) as f:
        assert sorted(line.split()[0] for line in f) == sorted(_digest(before[row].prompt) for row in (40, 70))
    assert result.computed_windows == 2 and result.complete
    after = RunStore.open(store)
    assert after.read_requests() == before and (after.read_answers() == answers_before).all()


def test_a_store_written_by_a_newer_sigray_is_refused_and_left_untouched(ray_session, cpu_signal, tmp_path, capsys):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    meta_path = os.path.join(store, "zarr.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["attributes"]["sigray"]["format_version"] = 3
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    before = _files(store)
    args = ["run", cpu_signal, "--store", store, "--engine", "test-double", "--chunk-windows", "32"]
    for command in (args, [*args, "--new"], ["status", store], ["results", store], ["detect", store]):
        assert cli(command) == 2, command
        err = capsys.readouterr().err
        assert "written by a newer sigray (store format 3); this sigray reads formats 1 and 2" in err
        assert "Traceback" not in err
    assert _files(store) == before


def test_damaged_store_metadata_is_a_clear_error_not_a_traceback(ray_session, cpu_signal, tmp_path, capsys):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    with open(os.path.join(store, "zarr.json"), "w") as f:
        f.write('{"zarr_format": 3, "node_type": "gro')  # cut mid-write by a crash or a full disk
    before = _files(store)
    assert cli(["run", cpu_signal, "--store", store, "--engine", "test-double"]) == 2
    err = capsys.readouterr().err
    assert f"{store} is not a sigray store" in err and "Traceback" not in err
    assert _files(store) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only): a disk that fills up. Skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_exclusive_create_that_cannot_write_its_content_leaves_nothing(small_disk):
    """The lease's mutex is such a create: left behind empty by a full disk, it named no holder, and the
    rerun after freeing space waited for it and was refused ("another process is taking its lease")."""
    from sigray.storage import open_storage

    storage = open_storage(small_disk)
    with open(os.path.join(small_disk, "ballast"), "wb") as f:
        with pytest.raises(OSError):
            f.write(b"\0" * 4 * 1024 * 1024)  # more than the disk holds
            f.flush()
    with pytest.raises(OSError):
        storage.create_exclusive("lease.mutex", b"x" * 64 * 1024)
    assert not storage.exists("lease.mutex")
    os.unlink(os.path.join(small_disk, "ballast"))
    assert storage.create_exclusive("lease.mutex", b"x" * 64 * 1024) and storage.exists("lease.mutex")


@pytest.mark.parametrize("flush_interval", ["0.5", "50"], ids=["mid-run", "at-the-final-flush"])
def test_a_full_disk_stops_the_run_cleanly_and_a_rerun_after_freeing_space_resumes(
    ray_session, cpu_signal, tmp_path, small_disk, capsys, flush_interval
):
    """With a 50 s interval nothing is saved until every window is answered (in about 6 s): the final flush
    fails, and the run must say so (it once reported every window generated, then exit 3)."""
    store = os.path.join(small_disk, "run")
    settings = {**FAST, "batch_size": 4, "chunk_windows": 16}
    prepare_without_engine(store, [cpu_signal], **settings)
    ballast = os.path.join(small_disk, "ballast")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * (free - 24 * 1024))  # room for a few chunks, not for the whole run

    args = ["run", cpu_signal, "--store", store, "--engine", "test-double", "--batch-size", "4"]
    args += ["--chunk-windows", "16", "--flush-interval", flush_interval, "--engine-option", "delay_s=0.02"]
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "the run stopped: cannot save to store" in err and "No space left on device" in err
    assert "Traceback" not in err
    status, _ = RunStore.open(store, read_only=True).read_state()  # still readable
    done_before = np.flatnonzero(status == DONE)
    assert len(done_before) < len(status)

    os.unlink(ballast)
    assert cli(args) == 0
    assert f"{len(done_before)} reused" in capsys.readouterr().out
    reference = str(tmp_path / "reference")
    sigray.run([cpu_signal], reference, **settings)
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    pd.testing.assert_frame_equal(
        sigray.open(store).results().anomalies[NAME], sigray.open(reference).results().anomalies[NAME]
    )
