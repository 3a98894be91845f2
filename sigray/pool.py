"""Workers kept between runs of one process, engines loaded (issue 19).

A notebook calls ``SigLLM.detect`` again and again; starting vLLM costs 40 s or more each
time, and a GPU model's load far more. A ``WorkerPool`` keeps the workers of the last run,
each with its engine, and hands them to the next run of the same engine, model, engine
options and resources; another engine or model closes them first (they hold the GPU it
needs). ``close()`` frees them; so does the end of the process (Ray ends a driver's actors).
"""

from __future__ import annotations

from sigray.worker import EngineSpec

CLOSE_S = 15.0  # how long engines get to exit gracefully before their actors are killed


class WorkerPool:
    """Idle workers (Ray actor handles by worker id) of one engine spec and actor options."""

    def __init__(self):
        self._key: tuple[EngineSpec, dict] | None = None
        self._idle: dict[str, object] = {}

    def take(self, spec: EngineSpec, options: dict, n: int) -> dict[str, object]:
        """Up to ``n`` idle workers that loaded ``spec`` with ``options``; the others are closed."""
        import ray

        if not ray.is_initialized() or self._key != (spec, options):
            self.close()  # another engine, or Ray was shut down (its actors with it)
            return {}
        taken = dict(list(self._idle.items())[:n])
        for worker_id in taken:
            del self._idle[worker_id]
        self.close()  # more than this run asks for
        return taken

    def keep(self, spec: EngineSpec, options: dict, workers: dict[str, object]) -> None:
        """Hold ``workers`` (whose runs ended cleanly) for the next run."""
        if self._key != (spec, options):
            self.close()
        self._key = (spec, options)
        self._idle.update(workers)

    def close(self) -> None:
        """Close the idle workers' engines (bounded wait) and end their actors."""
        close_workers(list(self._idle.values()))
        self._idle.clear()


def close_workers(workers: list) -> None:
    """Close engines gracefully (their processes, GPU memory; at most ``CLOSE_S``), then kill the actors."""
    if not workers:
        return
    import ray

    if not ray.is_initialized():
        return
    closing = [worker.close.remote() for worker in workers]
    ray.wait(closing, num_returns=len(closing), timeout=CLOSE_S)
    for worker in workers:
        ray.kill(worker, no_restart=True)
