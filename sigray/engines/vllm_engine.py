"""The vLLM engine: one ``vllm.LLM`` in this process, one ``llm.generate`` call per batch.

vLLM is imported when an engine is constructed, not when this module is imported (the
import alone takes 3-11 s on CPU, warm or cold page cache).
"""

from __future__ import annotations

import json
from typing import Any

from sigray.engines.base import Sampling

CPU_DEFAULTS: dict[str, Any] = {
    # torch.compile adds minutes on CPU and changes greedy text; eager is the tested path.
    "enforce_eager": True,
    # On CPU this is the fraction of the node's memory given to the worker; the default
    # (0.92) fails at engine start (see VLLM_CPU.md).
    "gpu_memory_utilization": 0.2,
    # A seeded request whose prefill is split across steps kills the CPU worker: vLLM rewinds
    # its generator with set_offset(), which CPU generators lack ("CPU Generator does not use
    # offset"). Seen with 64 prompts of ~300 tokens against the default 4096-token step budget.
    "enable_chunked_prefill": False,
    "max_model_len": 2048,
    "dtype": "auto",
}
"""``vllm.LLM`` options used on machines without a CUDA device, unless overridden."""

_MIN_BATCHED_TOKENS = 4096  # vLLM's default per-step token budget

GPU_DEFAULTS: dict[str, Any] = {
    "max_model_len": 2048,
    "dtype": "auto",
}
"""``vllm.LLM`` options used when ``torch.cuda.is_available()``, unless overridden."""


class VllmEngine:
    """Generates answers with ``vllm.LLM``; raw-text continuation, no chat template.

    ``options`` go to ``vllm.LLM(model=model, **options)`` on top of ``CPU_DEFAULTS`` or
    ``GPU_DEFAULTS``. Construction starts the engine processes (~30 s on CPU); the caller
    should build one engine and reuse it, and call ``close()`` (or use ``with``) to free it.
    Scripts that construct one need an ``if __name__ == "__main__":`` guard, because vLLM
    spawns its engine processes.

    Seeds: prompt ``i`` is sampled with ``seed=seeds[i]``; vLLM gives the ``k``-th of the
    ``n`` samples the seed ``seeds[i] + k``. Callers must therefore space the seeds of
    different prompts at least ``n`` apart, or prompts share sample seeds (equal prompts then
    get equal samples, and different prompts correlated ones).
    """

    def __init__(self, model: str, **options: Any):
        import torch
        from vllm import LLM

        defaults = GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
        self.model = model
        self.options = {**defaults, **options}
        if self.options.get("enable_chunked_prefill") is False and "max_num_batched_tokens" not in options:
            # Without chunking, vLLM requires one step to fit a whole max_model_len prompt.
            longest = self.options.get("max_model_len") or 0
            self.options["max_num_batched_tokens"] = max(_MIN_BATCHED_TOKENS, longest)
        self._llm = LLM(model=model, **self.options)

    def generate(self, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[list[str]]:
        """Return ``sampling.n`` texts per prompt, in prompt order, from one ``llm.generate`` call.

        The same (prompt, seed, sampling) gives the same texts from one engine, whatever else is
        in the batch (measured on CPU, eager, with chunked prefill off). Temperature 0
        is greedy: vLLM refuses ``n > 1`` there, so one greedy answer is sampled and repeated
        ``n`` times. Chat prompts (``sampling.chat``) go through the model's chat template.
        With ``sampling.regex`` every answer is constrained to match it in full,
        unless ``max_tokens`` cuts it short.

        Raises:
            ValueError: ``seeds`` and ``prompts`` differ in length.
            RuntimeError: the engine was closed.
        """
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
        if not prompts:
            return []
        if self._llm is None:
            raise RuntimeError(f"the vLLM engine for {self.model} is closed; create a new VllmEngine.")
        greedy = sampling.temperature == 0
        params = [self._params(sampling, seed, n=1 if greedy else sampling.n) for seed in seeds]
        if sampling.chat:
            conversations = [json.loads(p) for p in prompts]
            outputs = self._llm.chat(conversations, params, use_tqdm=False)
        else:
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
        texts = []
        for output in outputs:
            answers = [c.text for c in sorted(output.outputs, key=lambda c: c.index)]
            texts.append(answers * sampling.n if greedy else answers)
        return texts

    def close(self) -> None:
        """Shut the engine processes down and free their memory. Safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            shutdown()

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _params(sampling: Sampling, seed: int, n: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(regex=sampling.regex) if sampling.regex else None
        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=seed,
            structured_outputs=structured,
        )
