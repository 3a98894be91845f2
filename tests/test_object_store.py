"""The store on an S3-compatible object store (moto's server on 127.0.0.1), with the same
guarantees as on a local disk: a run equals a local one, a killed coordinator or a
SIGKILLed driver resumes with nothing flushed computed again."""

from __future__ import annotations

import collections
import os

import pandas as pd
import pytest

import sigray
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from tests.processes import sigkill_mid_run_then_rerun
from tests.test_faults import BackgroundRun

pytest.importorskip("s3fs")
pytest.importorskip("moto")

NAME = "cpu_utilization_asg_misconfiguration"
FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 4, "chunk_windows": 32}


def _objects(url: str) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs.find(root)


@pytest.mark.extended  # the storage contract runs on S3 in the default suite
def test_a_run_on_s3_equals_a_run_on_local_disk(ray_session, cpu_signal, tmp_path, s3_bucket):
    remote, local = f"{s3_bucket}/equal", str(tmp_path / "local")
    on_s3 = sigray.run([cpu_signal], remote, **FAST)
    on_disk = sigray.run([cpu_signal], local, **FAST)
    assert (RunStore.open(remote).read_answers() == RunStore.open(local).read_answers()).all()
    pd.testing.assert_frame_equal(on_s3.anomalies[NAME], on_disk.anomalies[NAME])
    pd.testing.assert_frame_equal(
        sigray.open(remote).results().anomalies[NAME], sigray.open(local).results().anomalies[NAME]
    )
    status = sigray.open(remote).status()
    assert status["done"] == 111 and not status["running"]
    assert any(key.endswith("status/c/0") for key in _objects(remote))
    assert not any(key.endswith(("lease.json", "lease.mutex")) for key in _objects(remote))  # released

    again = sigray.run([cpu_signal], remote, **FAST)
    assert again.computed_windows == 0 and again.resumed_windows == 111
    with pytest.raises(sigray.ConfigMismatchError, match="seed"):
        sigray.run([cpu_signal], remote, **{**FAST, "seed": 1})


@pytest.mark.extended
def test_a_killed_coordinator_resumes_from_the_object_store(ray_session, tmp_path, s3_bucket):
    import ray

    from tests.conftest import nab_signal
    from tests.test_faults import _actor

    signal, store = nab_signal("ambient_temperature_system_failure"), f"{s3_bucket}/coordinator"
    run = BackgroundRun(signal, store, **{**FAST, "workers": 2}, engine_options={"delay_s": 0.1})
    run.wait_for_done(150)
    ray.kill(_actor("sigray-coordinator-"), no_restart=False)
    result = run.result()
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all() and result.computed_windows == 1175
    reference = str(tmp_path / "reference")
    sigray.run([signal], reference, **{**FAST, "workers": 2})
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()


@pytest.mark.extended
def test_a_sigkilled_driver_resumes_from_the_object_store_redoing_only_unflushed_work(
    ray_session, cpu_signal, tmp_path, short_tmp, s3_bucket
):
    store, log = f"{s3_bucket}/sigkill", str(tmp_path / "generated.log")
    command = ["run", cpu_signal, "--store", store, "--engine", "test-double", "--batch-size", "4"]
    command += ["--flush-interval", "1", "--engine-option", "delay_s=0.25", "--engine-option", f"log_path={log}"]
    command += ["--num-cpus", "2"]
    done_at_kill, output, code = sigkill_mid_run_then_rerun(command, store, 30, os.path.join(short_tmp, "s3k"))
    assert code == 0, output[-3000:]
    assert f"{len(done_at_kill)} reused" in output
    prompts = RunStore.open(store).read_prompts()
    window_of = {_digest(p): w for w, p in enumerate(prompts)}
    with open(log) as f:
        generated = collections.Counter(window_of[line.split()[0]] for line in f)
    redone = {w for w, k in generated.items() if k > 1}
    assert redone.isdisjoint(done_at_kill), "nothing flushed before the kill is computed again"
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
