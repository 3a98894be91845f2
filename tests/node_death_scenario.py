"""A node dies ungracefully mid-run: run as its own process (its own Ray cluster).

    python -m tests.node_death_scenario SIGNAL STORE OUT_JSON

Starts a ``ray.cluster_utils.Cluster`` on this machine (a head, two nodes with one fake
GPU each), runs sigray with one worker per GPU node, removes the node of the worker that
is mid-batch ungracefully (its raylet and every process on it SIGKILLed) once 200
windows are done,
adds a fresh node (as an autoscaler would), and writes what happened to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(signal: str, store: str, out_json: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import sigray
    from sigray.store import DONE, RunStore
    from tests.test_faults import BackgroundRun

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        # One worker's engine stops inside its second batch, so its node is surely removed
        # mid-batch (a busy node picked at random is sometimes between two leases).
        busy = f"{store}.busy-worker-pid"
        options = {"delay_s": 0.1, "hang_once_path": busy}
        settings = {"engine": "test-double", "workers": 2, "gpus_per_worker": 1, "batch_size": 4}
        run = BackgroundRun(
            signal, store, flush_interval_s=0.5, lease_timeout_s=600, engine_options=options, **settings
        )
        run.wait_for_done(200)
        status, _ = RunStore.open(store, read_only=True).read_state()
        removed = _node_of(busy, nodes)
        coordinator_node = _coordinator_node()
        cluster.remove_node(removed, allow_graceful=False)
        removed_at = time.monotonic()
        cluster.add_node(num_cpus=1, num_gpus=1)
        result = run.result()
        outcome = {
            "done_at_removal": int(np.count_nonzero(status == DONE)),
            "seconds_to_finish": time.monotonic() - removed_at,
            "computed": result.computed_windows,
            "workers_replaced": result.workers_replaced,
            "requeued": result.requeued,
            "coordinator_on_removed_node": coordinator_node == removed.node_id,
            "anomalies": result.anomalies[result.signals.popitem()[0]].to_dict(orient="list"),
            "sigray": sigray.__name__,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    with open(out_json, "w") as f:
        json.dump(outcome, f)


def _node_of(pid_path: str, nodes):
    """The node running the worker process whose pid is in ``pid_path``."""
    from ray.util.state import list_actors

    with open(pid_path) as f:
        pid = int(f.read())
    [actor] = list_actors(filters=[("pid", "=", pid), ("state", "=", "ALIVE")])
    [node] = [n for n in nodes if n.node_id == actor.node_id]
    return node


def _coordinator_node() -> str:
    """The node the coordinator runs on (sigray places it beside the driver, on the head)."""
    from ray.util.state import list_actors

    [actor] = list_actors(filters=[("class_name", "=", "Coordinator"), ("state", "=", "ALIVE")])
    return actor.node_id


if __name__ == "__main__":
    main(*sys.argv[1:])
