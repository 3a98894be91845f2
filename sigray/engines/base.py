"""The contract every LLM engine meets: prompts in, sampled texts out.

Engines know nothing about windows, stores or retries; the worker owns those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    """How to sample answers for one batch of prompts.

    Attributes:
        n: answers sampled per prompt (sigllm's ``samples``).
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass.
        max_tokens: hard cap on generated tokens per answer.
        regex: when set, answers must match this regular expression in full
            (vLLM structured outputs); engines that cannot constrain ignore it.
        chat: every prompt is a chat request, a JSON list of ``{"role", "content"}``
            messages (sigllm's GPT pipelines); the engine applies the model's chat template.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    regex: str | None = None
    chat: bool = False


@runtime_checkable
class Engine(Protocol):
    """Generates answers for a batch of prompts.

    ``generate`` returns one list of ``sampling.n`` texts per prompt, in prompt order.
    ``seeds[i]`` seeds prompt ``i``: the same (prompt, seed, sampling) must give the
    same texts, so that a retried or resumed window is reproducible.
    """

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[list[str]]: ...
