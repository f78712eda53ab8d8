"""Rewrite LayerNorm over the last dimension into ops XNNPACK delegates."""

from __future__ import annotations

import math

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.decompose_group_norm import affine, normalize_last_two
from lgc.passes.fusion.graph_utils import NodeRewritePass, arg, shape_of

aten = torch.ops.aten


@register_pass
class DecomposeLayerNorm(NodeRewritePass):
    """Replace ``aten.layer_norm`` over the last dim by mean/sub/mul/rsqrt on a 4-D view.

    Before: ``layer_norm(x[..., D], [D], w, b, eps)`` (left outside the XNNPACK
            delegate in executorch 1.5.1, splitting every transformer block).
    After:  ``v = x.reshape(1, rows, D, 1)``; mean and variance over the two
            innermost dims (keepdim); ``(v - m) * rsqrt(var + eps)`` reshaped
            back, then ``* w + b``.
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
        g = gm.graph
        v = g.call_function(aten.reshape.default, (x, [1, math.prod(shape[:-1]), shape[-1], 1]))
        y = g.call_function(aten.reshape.default, (normalize_last_two(g, v, arg(node, 4, "eps", 1e-5)), list(shape)))
        return affine(g, y, arg(node, 2, "weight"), arg(node, 3, "bias"))
