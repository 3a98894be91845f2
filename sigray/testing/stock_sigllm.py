"""Stock sigllm in its own pinned environment, to check sigray's results against.

sigray runs sigllm's code on numpy 2 / pandas 2. Users of sigllm have it on its own pins
(numpy<2, pandas<2). ``ensure_stock_env`` builds that environment once, and
``run_stock_pipeline`` replays recorded LLM answers through stock sigllm there (see
``stock_replay.py``), so a test can compare anomalies from both sides on the same answers.

The environment holds sigllm, orion-ml and ml-stars installed without their dependencies
(they pull torch, tensorflow and CUDA, gigabytes the detector pipelines never import once
the LLM is replayed) plus the light packages those pipelines do import, at versions every
one of sigllm's, orion-ml's and ml-stars' ``Requires-Dist`` pins allows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pandas as pd

# Installed with --no-deps: exactly the versions sigray vendors the pipelines of.
STOCK_PACKAGES = ("sigllm==0.2.0", "orion-ml==0.7.1", "ml-stars==0.2.3")

# What the detector pipelines import, each pin allowed by all of:
#   sigllm 0.2.0:    numpy>=1.17.5,<2  pandas>=1.0.0,<2  scikit-learn>=0.22.1,<2
#   orion-ml 0.7.1:  numpy<2  pandas>=1,<3  scipy<1.14  pyts>=0.11,<0.14  numba>=0.48,<0.60
#                    mlblocks>=0.6.2,<0.7  tqdm>=4.36.1
#   ml-stars 0.2.3:  numpy<2  pandas>=1,<3  scikit-learn<2  scipy>=1.4.1,<2  mlblocks>=0.6.2
# Each is the newest release its pins allow (what ``pip install sigllm==0.2.0`` resolves).
# setuptools<81 keeps pkg_resources, which mlblocks' discovery imports.
RUNTIME_REQUIREMENTS = (
    "numpy==1.26.4",
    "pandas==1.5.3",
    "scikit-learn==1.9.1",
    "scipy==1.13.1",
    "pyts==0.13.0",
    "numba==0.59.1",
    "mlblocks==0.6.2",
    "tqdm>=4.36.1",
    "setuptools>=68,<81",
)

_PYTHON = "3.11"
_MARKER = "sigray-stock-env.json"  # written last: its presence means the env is complete
FREEZE_FILE = "stock-freeze.txt"
REPLAY_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stock_replay.py")


class StockEnvError(RuntimeError):
    """The stock sigllm environment could not be built (no network, no Python 3.11, ...)."""


class StockRunError(RuntimeError):
    """Stock sigllm raised while running a pipeline; carries its exception type and message."""

    def __init__(self, exc_type: str, exc_message: str, stock_traceback: str):
        super().__init__(f"stock sigllm raised {exc_type}: {exc_message}")
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.stock_traceback = stock_traceback


def default_env_path() -> str:
    """``$SIGRAY_STOCK_ENV``, else ``<repo>/.sigray-cache/stock-sigllm-venv``."""
    configured = os.environ.get("SIGRAY_STOCK_ENV")
    if configured:
        return os.path.abspath(configured)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo, ".sigray-cache", "stock-sigllm-venv")


def env_python(env: str) -> str:
    return os.path.join(env, "bin", "python")


def _wanted() -> dict:
    return {"python": _PYTHON, "no_deps": list(STOCK_PACKAGES), "requirements": list(RUNTIME_REQUIREMENTS)}


def _is_complete(env: str) -> bool:
    try:
        with open(os.path.join(env, _MARKER)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return {k: recorded.get(k) for k in _wanted()} == _wanted() and os.path.exists(env_python(env))


def ensure_stock_env(root: str | None = None) -> str:
    """The stock sigllm venv at ``root`` (default ``default_env_path()``), built if needed.

    Built in a temporary sibling directory and renamed into place, so a crash or a
    concurrent build never leaves a half-built env at ``root``; an env whose marker
    records other pins is rebuilt. The exact versions installed are in
    ``<env>/stock-freeze.txt``. Raises StockEnvError naming the step that failed.
    """
    env = os.path.abspath(root or default_env_path())
    if _is_complete(env):
        return env
    parent = os.path.dirname(env)
    os.makedirs(parent, exist_ok=True)
    build = tempfile.mkdtemp(prefix=f".{os.path.basename(env)}.build-", dir=parent)
    try:
        _build(build)
        _install(env, build)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return env


def _install(env: str, build: str) -> None:
    """Move the finished build to ``env``; a stale env there is replaced, a complete one kept."""
    if os.path.exists(env):
        if _is_complete(env):
            return  # another process finished first
        stale = tempfile.mkdtemp(prefix=f".{os.path.basename(env)}.stale-", dir=os.path.dirname(env))
        os.rename(env, os.path.join(stale, "env"))
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(build, env)
    except OSError:
        if not _is_complete(env):
            raise


def _build(path: str) -> None:
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    python = env_python(path)
    # sigray itself runs on 3.11: its interpreter is the base for the stock env too.
    base = sys.executable if sys.version_info[:2] == (3, 11) else _PYTHON
    if uv:
        _step("create the venv", [uv, "venv", "--relocatable", "--python", base, "--allow-existing", path])
        install = [uv, "pip", "install", "--python", python]
        freeze = [uv, "pip", "freeze", "--python", python]
    else:
        _step("create the venv", [sys.executable, "-m", "venv", "--clear", path])
        install = [python, "-m", "pip", "install", "--disable-pip-version-check"]
        freeze = [python, "-m", "pip", "freeze", "--all"]
    _step("install the runtime packages", [*install, *RUNTIME_REQUIREMENTS])
    _step("install sigllm, orion-ml and ml-stars", [*install, "--no-deps", *STOCK_PACKAGES])
    _step("import stock sigllm and load mistral_detector", [python, "-I", REPLAY_SCRIPT, "--check"])
    frozen = _step("record the versions", freeze)
    with open(os.path.join(path, FREEZE_FILE), "w") as f:
        f.write(frozen)
    with open(os.path.join(path, _MARKER), "w") as f:
        json.dump({**_wanted(), "freeze": frozen.splitlines()}, f, indent=1)


def _step(what: str, command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StockEnvError(f"stock sigllm env: could not {what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-2000:]
        raise StockEnvError(f"stock sigllm env: could not {what} ({' '.join(command[:4])} ...):\n{tail}")
    return done.stdout


def installed_versions(env: str) -> dict[str, str]:
    """``{package: version}`` from the env's recorded pip freeze."""
    with open(os.path.join(env, FREEZE_FILE)) as f:
        pairs = (line.split("==", 1) for line in f if "==" in line)
        return {name.strip().lower(): version.strip() for name, version in pairs}


def run_stock_pipeline(
    env: str,
    pipeline: str,
    signal_csv: str,
    answers: list[list[str]],
    out_json: str,
    hyperparameters: dict | None = None,
    normal_csv: str | None = None,
    timeout_s: float = 600,
) -> pd.DataFrame:
    """Stock sigllm's ``SigLLM(pipeline).detect(load_signal(signal_csv))``, its LLM replaying ``answers``.

    ``answers[w]`` is the list of sampled texts for window ``w``, in sigllm's window order;
    ``normal_csv`` is the reference signal of one-shot prompters. The stock run's full
    output (anomalies, the prompt each window sent, passes over the windows) is left in
    ``out_json``. Returns the anomalies (start, end, severity). Raises StockRunError
    with the stock exception's type and message when stock sigllm raises.
    """
    request = {
        "pipeline": pipeline,
        "signal_csv": os.path.abspath(signal_csv),
        "answers": [[str(text) for text in window] for window in answers],
        "hyperparameters": hyperparameters or {},
        "normal_csv": os.path.abspath(normal_csv) if normal_csv else None,
    }
    request_path = out_json + ".request.json"
    with open(request_path, "w") as f:
        json.dump(request, f)
    # -I: the stock env must see none of sigray's environment (PYTHONPATH, user site).
    done = subprocess.run(
        [env_python(env), "-I", REPLAY_SCRIPT, request_path, out_json],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    try:
        with open(out_json) as f:
            result = json.load(f)
    except (OSError, ValueError):
        raise RuntimeError(f"stock replay wrote no result (exit {done.returncode}):\n{done.stderr[-3000:]}") from None
    if "error" in result:
        error = result["error"]
        raise StockRunError(error["type"], error["message"], error["traceback"])
    anomalies = result["anomalies"]
    return pd.DataFrame(
        {
            "start": pd.Series(anomalies["start"], dtype="int64"),
            "end": pd.Series(anomalies["end"], dtype="int64"),
            "severity": pd.Series(anomalies["severity"], dtype="float64"),
        }
    )


def read_stock_result(out_json: str) -> dict:
    """The full JSON a ``run_stock_pipeline`` call left in ``out_json``."""
    with open(out_json) as f:
        return json.load(f)
