"""A last Core ML graph pass: equal constants shared from 1 element on, not 100.

Every MIL op's parameters (strides, axes, slice bounds, shapes, scalar
operands) are separate ``const`` ops in the program, each with its own name
and type: 1,143 of the reference U-Net's 1,866 ops. coremltools'
``common::const_deduplication`` merges equal constants only from 100
elements on. Run with its threshold at 1 as the pipeline's last pass, ops
share them (the reference U-Net's program -24%; weights are unaffected).

Why last, and not by ``PassPipeline.set_options`` on coremltools' own pass:
the threshold is a class attribute, so the option holds for every
deduplication in the pipeline (and after it), and coremltools' later passes
assume scalars are not shared. ``common::reduce_transposes`` rewrites a
shared scalar for one user and corrupted another's: lowering the reference
VAE decoder through ExecuTorch's Core ML backend failed with "The `alpha`
value (0.0) should be smaller than `beta` value (-1.0) in `clip` op".
"""

from __future__ import annotations

NAME = "lgc::dedup_small_constants"


def _register() -> None:
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import const_deduplication
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    if NAME in PASS_REGISTRY:
        return

    @register_pass(namespace="lgc")
    class dedup_small_constants(const_deduplication):  # noqa: N801 (coremltools names passes in snake case)
        def apply(self, prog) -> None:
            threshold = const_deduplication._const_threshold
            const_deduplication._const_threshold = 1
            try:
                super().apply(prog)
            finally:
                const_deduplication._const_threshold = threshold


def pass_names() -> list[str]:
    """coremltools' default pipeline with the pass appended (ExecuTorch's Core ML backend takes pass names)."""
    import coremltools as ct

    _register()
    return [*ct.PassPipeline.DEFAULT.passes, NAME]


def pipeline():
    """The same as a ``ct.PassPipeline`` for ``ct.convert``."""
    import coremltools as ct

    return ct.PassPipeline(pass_names(), pipeline_name="lgc")
