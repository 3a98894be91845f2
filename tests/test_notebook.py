"""sigray in a real Jupyter kernel (issue 19.3): the progress widget, and the stop button as a graceful stop.

The kernel is ipykernel's, driven through jupyter_client as JupyterLab drives it; its stop
button is ``interrupt_kernel`` (a SIGINT to the kernel process).
"""

from __future__ import annotations

import collections
import os
import queue
import time

import pytest

import sigray
from sigray.testing.processes import reap_orphans
from tests.conftest import nab_signal

jupyter_client = pytest.importorskip("jupyter_client.manager", reason="the test extra installs jupyter_client")

WIDGET = "application/vnd.jupyter.widget-view+json"


class Kernel:
    """A started kernel and its client; ``run`` executes a cell and collects what it shows."""

    def __init__(self, cwd: str, env: dict[str, str]):
        self.manager, self.client = jupyter_client.start_new_kernel(kernel_name="python3", cwd=cwd, env=env)
        self.shown: list[dict] = []  # every iopub message, in order

    def submit(self, code: str) -> str:
        return self.client.execute(code)

    def wait(self, msg_id: str, timeout_s: float = 300) -> dict:
        """The cell's reply (``status`` ok or error, ``ename``, ``evalue``), with its output collected."""
        reply = self.client.get_shell_msg(timeout=timeout_s)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout_s)
        self.drain(msg_id)
        return reply["content"]

    def drain(self, msg_id: str | None = None, timeout_s: float = 30) -> None:
        """Collect iopub messages; with ``msg_id``, until that cell is idle."""
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=timeout_s if msg_id else 0.1)
            except queue.Empty:
                return
            self.shown.append(message)
            if msg_id and message["parent_header"].get("msg_id") == msg_id and _idle(message):
                return

    def run(self, code: str, timeout_s: float = 300) -> dict:
        return self.wait(self.submit(code), timeout_s)

    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.shown if m["msg_type"] == "stream")

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def _idle(message: dict) -> bool:
    return message["msg_type"] == "status" and message["content"]["execution_state"] == "idle"


@pytest.fixture
def kernel(tmp_path, short_tmp):
    ray_tmp = os.path.join(short_tmp, "kernel-ray")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "SIGRAY_CACHE": str(tmp_path / "cache"), "SIGRAY_ENGINE": "test-double"}
    env.pop("RAY_ADDRESS", None)
    started = Kernel(str(tmp_path), env)
    try:
        yield started
    finally:
        try:
            started.run("model.close(); import ray; ray.shutdown()", timeout_s=60)
        finally:
            started.shutdown()
            reap_orphans(ray_tmp)


def _log_lines(path: str) -> list[str]:
    return open(path).read().split("\n")[:-1] if os.path.exists(path) else []


def test_the_stop_button_is_a_graceful_stop_and_detect_again_resumes(kernel, tmp_path):
    log = str(tmp_path / "prompts.log")
    setup = kernel.run(
        "import pandas as pd, sigray\n"
        f"data = pd.read_csv({nab_signal('art_load_balancer_spikes')!r})\n"
        "model = sigray.SigLLM('mistral_detector', interval=3600, batch_size=4, ray_options={'num_cpus': 2},\n"
        f"                     engine_options={{'delay_s': 0.25, 'log_path': {log!r}}})\n"
    )
    assert setup["status"] == "ok", setup

    cell = kernel.submit("events = model.detect(data)")
    deadline = time.monotonic() + 240
    while len(_log_lines(log)) < 12:  # windows being answered: press stop now
        assert time.monotonic() < deadline, kernel.stdout()
        kernel.drain()
    kernel.manager.interrupt_kernel()
    stopped = kernel.wait(cell)
    assert stopped["status"] == "error" and stopped["ename"] == "SigrayError", stopped
    assert "call detect again to resume" in stopped["evalue"]
    assert any(WIDGET in m["content"].get("data", {}) for m in kernel.shown), "no progress widget was shown"

    resumed = kernel.run(
        "events = model.detect(data)\nr = model.last_result\n"
        "print('RESULT', r.resumed_windows, r.computed_windows, r.total_windows, r.workers_reused, len(events))"
    )
    assert resumed["status"] == "ok", (resumed, kernel.stdout())
    line = next(x for x in kernel.stdout().splitlines() if x.startswith("RESULT"))
    done_before, computed, total, reused, events = map(int, line.split()[1:])
    assert done_before >= 12 and computed > 0 and done_before + computed == total
    assert reused == 1  # the stop kept the engine loaded
    asked = collections.Counter(entry.split()[0] for entry in _log_lines(log))
    assert len(asked) == total and max(asked.values()) == 1, "a window was asked twice"
    assert events > 0


TUTORIAL = os.path.join(os.path.dirname(__file__), os.pardir, "tutorials", "sigray_tutorial.ipynb")


def test_the_tutorial_is_kept_without_outputs():
    import nbformat

    notebook = nbformat.read(TUTORIAL, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_tutorial_runs_from_top_to_bottom(tmp_path, short_tmp, monkeypatch):
    """Executed as a reader runs it (with the test double: SIGRAY_ENGINE, as the tutorial says)."""
    import nbformat
    from nbclient import NotebookClient

    ray_tmp = os.path.join(short_tmp, "tutorial-ray")
    for variable, value in {
        "RAY_TMPDIR": ray_tmp,
        "SIGRAY_CACHE": str(tmp_path / "cache"),
        "SIGRAY_ENGINE": "test-double",
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    notebook = nbformat.read(TUTORIAL, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import ray; ray.shutdown()"))
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        reap_orphans(ray_tmp)
    text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert "asked now" in text and "windows asked: 0" in text  # the threshold changed, no answer asked again
    assert "F1" in text and "mistral_detector on" in text
    assert "Token authentication is enabled" not in text  # Ray's notice at every local start: not a reader's concern
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert (tmp_path / "tutorial-store").is_dir() and (tmp_path / "tutorial.png").is_file()
    # The run and detect held the same data: one signal, whose results are complete in every set.
    store = sigray.open(str(tmp_path / "tutorial-store"))
    assert store.signal_names == ["cpu_utilization_asg_misconfiguration"]
    assert all(store.results(chosen.id).complete for chosen in store.result_sets())
