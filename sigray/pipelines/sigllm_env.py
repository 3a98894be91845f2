"""Make sigllm's MLBlocks registry usable in sigray's environment.

sigray installs sigllm, orion-ml and ml-stars without their pins (numpy<2, torch<2.6,
tensorflow...; see the README), because vLLM needs numpy 2 and a new torch. MLBlocks
finds sigllm's pipeline and primitive JSONs through entry points loaded with
``pkg_resources``, which re-checks those pins and refuses. We read the same entry
points with ``importlib.metadata`` instead, which loads them without the pin check.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

_patched = False


def _load_entry_points(entry_point_name: str, entry_point_group: str = "mlblocks") -> list[str]:
    return list(_registered_paths(entry_point_name, entry_point_group))


@functools.cache
def _registered_paths(entry_point_name: str, entry_point_group: str) -> tuple[str, ...]:
    """The paths the installed packages register; read once per process (each scan of every
    installed package's entry points costs tens of milliseconds, and MLBlocks asks per primitive)."""
    paths: list[str] = []
    for entry_point in entry_points(group=entry_point_group):
        if entry_point.name == entry_point_name:
            loaded = entry_point.load()
            paths.extend([loaded] if isinstance(loaded, str) else list(loaded))
    return tuple(paths)


def use_sigllm_registry() -> None:
    """Route MLBlocks discovery through ``importlib.metadata`` (idempotent)."""
    global _patched
    if _patched:
        return
    import mlblocks.discovery

    mlblocks.discovery._load_entry_points = _load_entry_points
    defer_pyts_import()
    _patched = True


def defer_pyts_import() -> None:
    """Make ``from pyts.metrics import dtw`` cheap until dtw is really called.

    Orion's ``timeseries_errors`` imports pyts's DTW at module level, and importing
    ``pyts.metrics`` compiles its numba kernels: about 16 s on every run, although
    sigllm's pipelines never call DTW. The stand-in loads the real function on first
    use, so behaviour is unchanged.
    """
    import sys
    import types

    if "pyts.metrics" in sys.modules:
        return
    stand_in = types.ModuleType("pyts.metrics")

    def dtw(*args, **kwargs):
        sys.modules.pop("pyts.metrics", None)
        from pyts.metrics import dtw as real_dtw

        return real_dtw(*args, **kwargs)

    stand_in.dtw = dtw
    sys.modules["pyts.metrics"] = stand_in
