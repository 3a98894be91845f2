"""A node dies ungracefully mid-run (``ray.cluster_utils.Cluster``, fake GPUs): its worker's
windows are requeued uncharged, a replacement worker starts, the run completes with the
answers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import sigray
from sigray.store import DONE, RunStore
from tests.conftest import ROOT, nab_signal
from tests.processes import reap_orphans

pytestmark = pytest.mark.extended
NAME = "ambient_temperature_system_failure"


def test_a_node_removed_mid_run_loses_nothing(ray_session, tmp_path, short_tmp):
    signal, store, out = nab_signal(NAME), str(tmp_path / "run"), str(tmp_path / "outcome.json")
    ray_tmp = os.path.join(short_tmp, "nodes")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.node_death_scenario", signal, store, out],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        reap_orphans(ray_tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out) as f:
        outcome = json.load(f)
    assert 200 <= outcome["done_at_removal"] < 1175, outcome
    assert outcome["workers_replaced"] >= 1, (outcome, done.stderr[-4000:])
    # cluster_utils' nodes share one address, so the driver (and the coordinator beside it) may sit on the
    # removed node: then the coordinator restarts elsewhere and rebuilds from the store, requeuing as it does.
    if not outcome["coordinator_on_removed_node"]:
        assert outcome["requeued"] >= 1, (outcome, done.stderr[-4000:])
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()

    reference = str(tmp_path / "reference")
    expected = sigray.run([signal], reference, engine="test-double", batch_size=4)
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    got = pd.DataFrame(outcome["anomalies"])
    pd.testing.assert_frame_equal(got, expected.anomalies[NAME].reset_index(drop=True), check_dtype=False)
