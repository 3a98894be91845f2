"""A tiny random-weight Llama model that vLLM can load, built offline in about a second.

Tests and benchmarks need a real ``vllm.LLM`` without downloading anything: this builds a
2-layer LlamaForCausalLM (hidden 128, 4 heads / 2 KV heads of size 32, since vLLM's CPU
attention rejects head size 16) and a byte-level BPE tokenizer of a few hundred tokens
trained on a built-in corpus of number series and English words. Its answers are noise,
but they go through the whole engine path: tokenizer, scheduler, sampler, structured
outputs.

Everything is seeded, so two builds are byte-identical (with the same library versions).
"""

from __future__ import annotations

import os
import shutil
import tempfile

VOCAB_SIZE = 512
"""Tokenizer size: 256 bytes, 3 special tokens, the rest BPE merges."""

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
"""Begin, end and padding tokens, ids 0, 1 and 2."""

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
"""Files a complete build has; the directory appears whole (atomic rename) or not at all."""

_SEED = 1234

_WORDS = (
    "the series below is a time series of integer values separated by commas "
    "continue the sequence with the next values forecast anomaly signal window "
    "value values number numbers sensor reading readings hour day week month year "
    "answer only with numbers and commas do not explain yes no true false "
    "a an and or of to in is are was were be for on with as by at from this that it"
)


def _corpus() -> list[str]:
    """Deterministic training text: integer series, bracketed lists and English sentences."""
    import numpy as np

    rng = np.random.default_rng(_SEED)
    # Repeated so that English merges compete with the many digit merges.
    lines = [_WORDS, _WORDS.capitalize() + "."] * 20
    for _ in range(200):
        start, step = int(rng.integers(0, 1000)), int(rng.integers(-20, 21))
        series = [max(0, start + step * k + int(rng.integers(-3, 4))) for k in range(int(rng.integers(5, 20)))]
        lines.append(",".join(map(str, series)))
        lines.append("[" + ", ".join(map(str, series)) + "]")
        lines.append("(" + " ".join(map(str, series)) + ")")
    lines.append("0,1,2,3,4,5,6,7,8,9 [0] [1] {2} (3) 10, 20, 30, 40, 50, 60, 70, 80, 90, 100")
    return lines


def _build_tokenizer():
    """Byte-level BPE that prepends ``<s>`` like Llama's tokenizer, wrapped for ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    # Trim the byte-level post-processing offsets and prepend BOS on encode.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


def _build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(_SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.eval()
    return model


def _write(staging: str) -> None:
    from transformers.utils import logging as hf_logging

    tokenizer = _build_tokenizer()
    model = _build_model(tokenizer)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" is noise in test logs
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # mkdtemp makes the directory private and safetensors writes 0600; the model is shared.
    os.chmod(staging, 0o755)
    for name in os.listdir(staging):
        os.chmod(os.path.join(staging, name), 0o644)


def is_complete(directory: str) -> bool:
    """Whether ``directory`` holds a finished build (every file of ``REQUIRED_FILES``)."""
    return all(os.path.isfile(os.path.join(directory, name)) for name in REQUIRED_FILES)


def build_tiny_model(directory: str) -> str:
    """Build the tiny model into ``directory`` (unless already there) and return ``directory``.

    Idempotent: a complete model already in ``directory`` is returned untouched. The build is
    written to a temporary sibling directory and renamed into place, so a killed build never
    leaves a half model, and concurrent builders leave exactly one. ``directory`` may be
    missing or an empty directory; a non-empty directory without a complete model is an error
    (``FileExistsError``) rather than something we delete.
    """
    directory = os.path.abspath(directory)
    if is_complete(directory):
        return directory
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        _write(staging)
        try:
            os.rename(staging, directory)  # replaces an empty directory; fails on a non-empty one
        except OSError:
            if not is_complete(directory):  # another builder that won the race is fine
                raise FileExistsError(
                    f"{directory} exists and is not empty but holds no complete tiny model; "
                    "remove it or choose another directory."
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
