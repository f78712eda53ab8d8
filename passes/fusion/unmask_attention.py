"""Rewrite mask-free scaled-dot-product attention as bmm/softmax/bmm."""

from __future__ import annotations

import math

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, arg, shape_of

aten = torch.ops.aten


@register_pass
class UnmaskAttention(NodeRewritePass):
    """Replace ``scaled_dot_product_attention`` without a mask by its three delegable ops.

    Before: ``sdpa(q, k, v)``, which ``to_edge`` decomposes with "safe softmax"
            mask glue (``any``, ``eq``, ``where``, ``logical_not``, ``full_like``)
            that XNNPACK does not take, splitting the delegate at every attention.
    After:  ``bmm(softmax(bmm(q * s, k^T), -1), v)`` on 3-D views (batch x heads
            folded; a 4-D matmul would leave expand/squeeze copies outside the
            delegate), with ``s = 1/sqrt(d)`` folded into q.
    Only calls with no attention mask, no dropout and no causal flag are
    rewritten (the U-Net's self/cross attention); the text encoder's causal
    attention is left alone. Exact up to fp32 rounding (the safe-softmax glue
    only matters for fully masked rows, which a mask-free call cannot have).
    """

    name = "unmask_attention"
    group = "fusion"
    op_targets = (aten.scaled_dot_product_attention.default,)

    def rewrite(self, gm, node):
        q, k, v = node.args[:3]
        if arg(node, 3, "attn_mask") is not None or arg(node, 4, "dropout_p", 0.0) or arg(node, 5, "is_causal", False):
            return None
        shapes = [shape_of(t) for t in (q, k, v)]
        if any(s is None or len(s) != 4 for s in shapes):
            return None
        (B, H, S, D), (_, _, Sk, _), (_, _, _, Dv) = shapes
        scale = node.kwargs.get("scale")
        s = scale if scale is not None else 1.0 / math.sqrt(D)
        g = gm.graph
        q3 = g.call_function(aten.reshape.default, (g.call_function(aten.mul.Tensor, (q, s)), [B * H, S, D]))
        k3 = g.call_function(aten.reshape.default, (k, [B * H, Sk, D]))
        v3 = g.call_function(aten.reshape.default, (v, [B * H, Sk, Dv]))
        scores = g.call_function(aten.bmm.default, (q3, g.call_function(aten.transpose.int, (k3, 1, 2))))
        out3 = g.call_function(aten.bmm.default, (g.call_function(aten.softmax.int, (scores, -1)), v3))
        return g.call_function(aten.reshape.default, (out3, [B, H, S, Dv]))
