"""sigllm's multivariate formats as its own ``run_pipeline`` calls them: with the block's settings.

sigllm's MLBlocks annotations hand a format's settings (``trunc``, ``digits_per_timestamp``,
``separator``) to its constructor, but the value-concatenation, univariate-control and
interleave classes read ``trunc`` and ``digits_per_timestamp`` only as arguments of
``format_as_integer`` and ``format_as_string``. In a pipeline JSON a reader then keeps every
value of an answer (post-processing crashes as soon as two answers differ in length:
``aggregate_rolling_window``'s "not enough values to unpack"), and a writer's
``digits_per_timestamp`` is silently 3. sigllm's own
``sigllm.primitives.formatting.utils.run_pipeline`` passes the settings
(``method.format_as_string(X, **method.config)``); these stand-ins (in ``SigllmPipeline._build``)
do the same and are otherwise sigllm's classes.
"""

from __future__ import annotations

from sigllm.primitives.formatting import digit_interleave, univariate_control, value_concatenation, value_interleave

from sigray.pipelines.answers import FORMAT_CLASSES


def _settings(config: dict, kwargs: dict) -> dict:
    """The block's settings, under what MLBlocks passes (its produce arguments, ``None`` when unset)."""
    return {**config, **{k: v for k, v in kwargs.items() if v is not None}}


def _as_configured(base: type) -> type:
    def format_as_string(self, X, **kwargs):
        return base.format_as_string(self, X, **_settings(self.config, kwargs))

    def format_as_integer(self, X, **kwargs):
        return base.format_as_integer(self, X, **_settings(self.config, kwargs))

    methods = {"format_as_string": format_as_string, "format_as_integer": format_as_integer, "__module__": __name__}
    return type(base.__name__, (base,), methods)


ValueConcatenation = _as_configured(value_concatenation.ValueConcatenation)
UnivariateControl = _as_configured(univariate_control.UnivariateControl)
ValueInterleave = _as_configured(value_interleave.ValueInterleave)
DigitInterleave = _as_configured(digit_interleave.DigitInterleave)

# primitive name in a pipeline JSON -> this module's stand-in
STAND_INS = {
    f"sigllm.primitives.formatting.{module}.{method}": f"{__name__}.{name}"
    for module, name in FORMAT_CLASSES.items()
    for method in ("format_as_string", "format_as_integer")
}
