"""Rewrite mask-free scaled-dot-product attention as matmul/softmax/matmul."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import finish, graphs, shape_of

aten = torch.ops.aten


@register_pass
class UnmaskAttention(Pass):
    """Replace ``scaled_dot_product_attention`` without a mask by its three delegable ops.

    Before: ``sdpa(q, k, v)``, which ``to_edge`` decomposes with "safe softmax"
            mask glue (``any``, ``eq``, ``where``, ``logical_not``, ``full_like``)
            that XNNPACK does not take, splitting the delegate at every attention.
    After:  ``bmm(softmax(bmm(q * s, k^T), -1), v)`` on 3-D views (batch x heads
            folded), with ``s = 1/sqrt(d)`` folded into q.
    Only calls with no attention mask, no dropout and no causal flag are
    rewritten (the U-Net's self/cross attention); the text encoder's causal
    attention is left alone. Exact up to fp32 rounding (the safe-softmax glue
    only matters for fully masked rows, which a mask-free call cannot have).
    """

    name = "unmask_attention"
    group = "fusion"
    op_targets = (aten.scaled_dot_product_attention.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("unet", "vae_decoder", "vae_encoder")  # graphs to rewrite

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, gm in graphs(state, config.components):
            n = 0
            for node in list(gm.graph.nodes):
                if node.target != aten.scaled_dot_product_attention.default:
                    continue
                q, k, v = node.args[:3]
                mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
                dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
                causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
                scale = node.kwargs.get("scale")
                shape = shape_of(q)
                if mask is not None or dropout or causal or shape is None:
                    continue
                kshape, vshape = shape_of(k), shape_of(v)
                if kshape is None or vshape is None or len(shape) != 4:
                    continue
                B, H, S, D = shape
                s = scale if scale is not None else 1.0 / math.sqrt(D)
                g = gm.graph
                with g.inserting_before(node):
                    # 3-D bmm: a 4-D matmul would become expand/squeeze copies outside the delegate.
                    q3 = g.call_function(aten.reshape.default, (g.call_function(aten.mul.Tensor, (q, s)), [B * H, S, D]))
                    k3 = g.call_function(aten.reshape.default, (k, [B * H, kshape[2], D]))
                    v3 = g.call_function(aten.reshape.default, (v, [B * H, vshape[2], vshape[3]]))
                    scores = g.call_function(aten.bmm.default, (q3, g.call_function(aten.transpose.int, (k3, 1, 2))))
                    probs = g.call_function(aten.softmax.int, (scores, -1))
                    out3 = g.call_function(aten.bmm.default, (probs, v3))
                    out = g.call_function(aten.reshape.default, (out3, [B, H, S, vshape[3]]))
                node.replace_all_uses_with(out)
                g.erase_node(node)
                n += 1
            if n:
                finish(gm)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
