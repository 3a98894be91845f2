"""vLLM general plugin: let CPU engine processes use AMX tiles before any kernel does.

Linux only lets a process execute AMX tile instructions after it asks for them
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``). vLLM's bf16 AMX attention kernel does not ask, so on
AMX CPUs a worker whose first attention call comes before any oneDNN AMX matmul (short
prompts, small models) dies with ``Illegal instruction``. ``torch._C._cpu._init_amx()`` asks.

vLLM calls every ``vllm.general_plugins`` entry point once in each of its processes (front
end, engine core, workers) before the model loads; pyproject.toml registers ``init_amx``.
"""

from __future__ import annotations

import logging

# Under "vllm." so that VLLM_LOGGING_LEVEL=DEBUG shows it, with vLLM's process prefix.
logger = logging.getLogger("vllm.plugins.sigray_amx")


def init_amx() -> None:
    """Request AMX tile permission for this process when vLLM runs on CPU.

    A silent no-op where torch has no ``_init_amx`` or vLLM's platform is not the CPU (GPU
    builds, other accelerators). Never raises: a failing plugin must not stop an engine.
    """
    try:
        import torch

        request = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
        if request is None or not _on_cpu():
            return
        granted = request()  # False on CPUs without AMX, which then need nothing
        logger.debug("sigray: AMX tile permission requested, granted=%s", granted)
    except Exception:  # a plugin must never take the engine down
        logger.debug("sigray: AMX initialisation skipped", exc_info=True)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
