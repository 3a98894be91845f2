"""sigllm's multivariate format readers as its own ``run_pipeline`` calls them: with ``trunc``.

sigllm's MLBlocks annotations hand a format's settings (``trunc`` among them) to its
constructor, and the value-concatenation, univariate-control and interleave readers take
``trunc`` only as an argument of ``format_as_integer``: in a pipeline JSON they keep every
value of an answer, and post-processing crashes as soon as two answers differ in length
(``aggregate_rolling_window``: "not enough values to unpack"). sigllm's own
``sigllm.primitives.formatting.utils.run_pipeline`` passes ``trunc=1``; these stand-ins
(``REPLACEMENTS`` in ``sigllm_pipeline``) pass the pipeline's ``trunc`` and are otherwise
sigllm's classes.
"""

from __future__ import annotations

from sigllm.primitives.formatting import digit_interleave, univariate_control, value_concatenation, value_interleave

from sigray.pipelines.answers import FORMAT_CLASSES


def _keeping_trunc(base: type) -> type:
    def format_as_integer(self, X, trunc=None, **kwargs):
        return base.format_as_integer(self, X, trunc=self.config.get("trunc") if trunc is None else trunc, **kwargs)

    return type(base.__name__, (base,), {"format_as_integer": format_as_integer, "__module__": __name__})


ValueConcatenation = _keeping_trunc(value_concatenation.ValueConcatenation)
UnivariateControl = _keeping_trunc(univariate_control.UnivariateControl)
ValueInterleave = _keeping_trunc(value_interleave.ValueInterleave)
DigitInterleave = _keeping_trunc(digit_interleave.DigitInterleave)

# primitive name in a pipeline JSON -> this module's stand-in
READERS = {
    f"sigllm.primitives.formatting.{module}.format_as_integer": f"{__name__}.{name}"
    for module, name in FORMAT_CLASSES.items()
}
