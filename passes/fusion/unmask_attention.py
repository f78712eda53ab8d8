"""Rewrite scaled-dot-product attention (no mask, or a constant one) as bmm/softmax/bmm."""

from __future__ import annotations

import math

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, constant_of, shape_of

aten = torch.ops.aten


@register_pass
class UnmaskAttention(NodeRewritePass):
    """Replace ``scaled_dot_product_attention`` without a mask, or with a constant one, by delegable ops.

    Before: ``sdpa(q, k, v)``, which ``to_edge`` decomposes with "safe softmax"
            mask glue (``any``, ``eq``, ``where``, ``logical_not``, ``full_like``)
            that XNNPACK does not take, splitting the delegate at every attention.
    After:  ``bmm(softmax(bmm(q * s, k^T), -1), v)`` on 3-D views (batch x heads
            folded; a 4-D matmul would leave expand/squeeze copies outside the
            delegate), with ``s = 1/sqrt(d)`` folded into q.
    A constant mask (the text encoder's causal mask once ``fold_constants``
    has run) becomes an additive bias added to the scores before the softmax:
    0 where attention is allowed, the most negative float where it is not.
    Calls with dropout, ``is_causal``, a mask computed from the inputs, or a
    mask with a fully masked row are left alone. Exact up to fp32 rounding
    (the safe-softmax glue only matters for fully masked rows, excluded here).
    """

    name = "unmask_attention"
    group = "fusion"
    op_targets = (aten.scaled_dot_product_attention.default,)

    def rewrite(self, gm, node):
        q, k, v = node.args[:3]
        if arg(node, 4, "dropout_p", 0.0) or arg(node, 5, "is_causal", False):
            return None
        shapes = [shape_of(t) for t in (q, k, v)]
        if any(s is None or len(s) != 4 for s in shapes):
            return None
        (B, H, S, D), (_, _, Sk, _), (_, _, _, Dv) = shapes
        mask = arg(node, 3, "attn_mask")
        bias = None
        if mask is not None:
            bias = additive_bias(constant_of(gm, mask), B, H, S, Sk)
            if bias is None:
                return None
        scale = node.kwargs.get("scale")
        s = scale if scale is not None else 1.0 / math.sqrt(D)
        g = gm.graph
        q3 = g.call_function(aten.reshape.default, (g.call_function(aten.mul.Tensor, (q, s)), [B * H, S, D]))
        k3 = g.call_function(aten.reshape.default, (k, [B * H, Sk, D]))
        v3 = g.call_function(aten.reshape.default, (v, [B * H, Sk, Dv]))
        scores = g.call_function(aten.bmm.default, (q3, g.call_function(aten.transpose.int, (k3, 1, 2))))
        if bias is not None:
            scores = g.call_function(aten.add.Tensor, (scores, add_constant(gm, f"lgc_attention_bias_{mask.name}", bias)))
        out3 = g.call_function(aten.bmm.default, (g.call_function(aten.softmax.int, (scores, -1)), v3))
        return g.call_function(aten.reshape.default, (out3, [B, H, S, Dv]))


def additive_bias(mask: torch.Tensor | None, B: int, H: int, S: int, Sk: int) -> torch.Tensor | None:
    """A constant SDPA mask as a (1 or B*H, S, Sk) float bias, or None when it cannot be one."""
    if mask is None or mask.dim() > 4:
        return None
    try:
        full = mask.expand(B, H, S, Sk)
    except RuntimeError:
        return None
    if mask.dtype == torch.bool:
        if not full.any(dim=-1).all():  # a fully masked row: SDPA's safe softmax gives zeros there
            return None
        full = torch.zeros(full.shape).masked_fill(~full, torch.finfo(torch.float32).min)
    elif not mask.is_floating_point():
        return None
    full = full.float()
    # One (S, Sk) bias broadcast over batch and heads when it is the same for all.
    if (full == full[:1, :1]).all():
        return full[0, 0].reshape(1, S, Sk).clone()
    return full.reshape(B * H, S, Sk).clone()
