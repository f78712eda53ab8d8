"""A Relax module pass from an expression mutator: the shape lgc's Relax rewrites (fast math, fused attention) share."""

from __future__ import annotations


def mutator_pass(mutator_class, name: str):
    """A ``tvm.transform.Pass`` visiting every Relax function of the module with a new ``mutator_class(mod)``.

    The mutator's block builder holds the module: what the mutator adds to it
    (kernels) lands in the module the pass returns.
    """
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def transform(mod, ctx):
        mutator = mutator_class(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return transform
