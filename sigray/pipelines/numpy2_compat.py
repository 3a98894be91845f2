"""Stand-ins for the few MLBlocks primitives that stock annotations break on numpy 2.

Each stand-in computes exactly what the original computed on numpy 1.x; only the
calling convention differs.
"""

from __future__ import annotations

import numpy as np


def reshape(a, newshape=(-1, 1), order="C"):
    """``numpy.reshape`` as mlstars' JSON calls it: numpy 2.1 made ``a`` positional-only."""
    return np.reshape(a, newshape, order=order)


# primitive name in sigllm's pipeline JSON -> importable stand-in
REPLACEMENTS = {"numpy.reshape": "sigray.pipelines.numpy2_compat.reshape"}
