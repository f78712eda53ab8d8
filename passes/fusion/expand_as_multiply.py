"""Rewrite a small ``expand`` as a broadcasting multiply by ones, which XNNPACK delegates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import ALL_COMPONENTS, NodeRewritePass, add_constant, shape_of

aten = torch.ops.aten


@register_pass
class ExpandAsMultiply(NodeRewritePass):
    """Replace ``expand(x, shape)`` by ``x * ones(shape)`` when the result is small.

    Before: ``t.expand(B)``: diffusers U-Nets broadcast the timestep to the
            batch this way. XNNPACK has no expand, so it stays outside the
            delegate and the step starts with a trip through a portable kernel.
    After:  ``mul(t, ones[B])``, a broadcasting multiply XNNPACK takes. Exact
            (``x * 1 == x`` for every float, inf and NaN included).
    Only for results of at most ``max_elements`` elements: the ones are a
    stored constant, and a large expand (an attention mask) would cost bytes.
    """

    name = "expand_as_multiply"
    group = "fusion"
    op_targets = (aten.expand.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ALL_COMPONENTS  # names of the component graphs to rewrite
        max_elements: int = 1024  # largest expanded result rewritten (its ones are stored: 4 bytes each)

        def __post_init__(self):
            if self.max_elements < 1:
                raise ValueError("max_elements must be at least 1")

    def rewrite(self, gm, node):
        x = node.args[0]
        out, val = shape_of(node), x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if out is None or val is None or not val.dtype.is_floating_point or math.prod(out) > self.config.max_elements:
            return None
        ones = add_constant(gm, f"lgc_ones_{'x'.join(map(str, out))}", torch.ones(out, dtype=val.dtype))
        return gm.graph.call_function(aten.mul.Tensor, (x, ones))
