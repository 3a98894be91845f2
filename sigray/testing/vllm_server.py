"""vLLM's own OpenAI-compatible server on 127.0.0.1, for tests and benchmarks of the HTTP engine.

``python -m vllm.entrypoints.openai.api_server`` (the package's ``vllm serve`` command does not
run in the CPU build), in its own process group so it can be SIGKILLed whole, with the settings
sigray's in-process engine uses on CPU (eager, chunked prefill off: see ``VllmEngine``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


class VllmServer:
    """``start()`` returns once ``/v1/models`` answers; ``kill()`` SIGKILLs it and its engine."""

    def __init__(self, model: str, served_name: str, log_path: str, max_model_len: int = 2048):
        self.model, self.served_name, self.log_path, self.max_model_len = model, served_name, log_path, max_model_len
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> None:
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        command += ["--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--enforce-eager", "--gpu-memory-utilization", "0.2", "--max-model-len", str(self.max_model_len)]
        command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(4096, self.max_model_len))]
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM's server exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)  # polling a starting server
        self.kill()
        raise RuntimeError(f"vLLM's server was not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
