"""Rewrite LayerNorm over the last dimension into ops XNNPACK delegates: a mean as a matrix product, arithmetic."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.decompose_group_norm import affine, normalize
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, shape_of

aten = torch.ops.aten


@register_pass
class DecomposeLayerNorm(NodeRewritePass):
    """Replace ``aten.layer_norm`` over the last dim by a matrix-product mean and elementwise ops.

    Before: ``layer_norm(x[..., D], [D], w, b, eps)`` (left outside the XNNPACK
            delegate in executorch 1.5.1, splitting every transformer block).
    After:  ``mean(v) = linear(v, ones(1, D) / D)`` (shape [..., 1]);
            ``d = x - mean(x)``; ``y = d * rsqrt(mean(d*d) + eps) * w + b``,
            eps added by the second mean's linear bias.
            XNNPACK's mean takes 4-D tensors only; an earlier form reshaped
            ``x`` to (1, rows, D, 1) for it, and the delegate transposed that
            view in and out of channels-last around every norm. The linear
            keeps ``x`` in its own layout and costs the same D MACs per row.
    Numerically the same as layer_norm up to fp32 rounding. Runs after
    quantization, so the statistics stay in fp32.
    Precondition: normalisation over the last dimension only, static shapes.
    """

    name = "decompose_layer_norm"
    group = "fusion"
    op_targets = (aten.layer_norm.default,)

    def rewrite(self, gm, node):
        x, normalized = node.args[0], list(node.args[1])
        shape = shape_of(x)
        if shape is None or len(normalized) != 1 or shape[-1] != normalized[0]:
            return None
        D = shape[-1]
        g = gm.graph
        average = add_constant(gm, f"lgc_row_average_{D}", torch.full((1, D), 1.0 / D))
        eps = add_constant(gm, "lgc_row_eps", torch.full((1,), float(arg(node, 4, "eps", 1e-5))))

        def row_mean(v, plus_eps):
            return g.call_function(aten.linear.default, (v, average, eps if plus_eps else None))

        return affine(gm, normalize(g, x, row_mean), arg(node, 2, "weight"), arg(node, 3, "bias"))
