"""Rewrite GroupNorm into the mean/sub/mul/rsqrt ops XNNPACK delegates."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, arg, shape_of

aten = torch.ops.aten


def normalize_last_two(g: torch.fx.Graph, v, eps: float):
    """``(v - mean) * rsqrt(var + eps)`` over the two innermost dims of the 4-D ``v`` (XNNPACK's mean form)."""
    mean = g.call_function(aten.mean.dim, (v, [2, 3], True))
    d = g.call_function(aten.sub.Tensor, (v, mean))
    var = g.call_function(aten.mean.dim, (g.call_function(aten.mul.Tensor, (d, d)), [2, 3], True))
    inv = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
    return g.call_function(aten.mul.Tensor, (d, inv))


def affine(g: torch.fx.Graph, y, weight, bias, shape=None):
    """``y * weight + bias`` (each optional), the parameters reshaped to ``shape`` when given."""
    if weight is not None:
        w = g.call_function(aten.reshape.default, (weight, shape)) if shape else weight
        y = g.call_function(aten.mul.Tensor, (y, w))
    if bias is not None:
        b = g.call_function(aten.reshape.default, (bias, shape)) if shape else bias
        y = g.call_function(aten.add.Tensor, (y, b))
    return y


@register_pass
class DecomposeGroupNorm(NodeRewritePass):
    """Replace ``aten.group_norm`` by arithmetic on a 4-D view, so the U-Net stays inside one delegate.

    Before: ``group_norm(x[N,C,H,W], G, w, b, eps)`` (XNNPACK has no GroupNorm:
            each one splits the delegate and runs in a portable kernel).
    After:  ``v = x.reshape(N, G, C/G*H*W, 1)``; ``m = v.mean((2,3), keepdim)``;
            ``d = v - m``; ``y = d * rsqrt((d*d).mean((2,3), keepdim) + eps)``;
            ``y.reshape(N,C,H,W) * w.reshape(1,C,1,1) + b.reshape(1,C,1,1)``.
            XNNPACK takes 4-D ``mean.dim`` over the two innermost dims only,
            hence the trailing singleton dimension.
    Numerically the same as group_norm up to fp32 rounding. Runs after
    quantization in the pipeline, so the statistics stay in fp32.
    Precondition: static shapes (every lgc component has them).
    """

    name = "decompose_group_norm"
    group = "fusion"
    op_targets = (aten.group_norm.default,)

    def rewrite(self, gm, node):
        x, groups = node.args[0], node.args[1]
        shape = shape_of(x)
        if shape is None or len(shape) != 4:
            return None
        N, C, H, W = shape
        g = gm.graph
        v = g.call_function(aten.reshape.default, (x, [N, groups, C // groups * H * W, 1]))
        y = g.call_function(aten.reshape.default, (normalize_last_two(g, v, arg(node, 4, "eps", 1e-5)), [N, C, H, W]))
        return affine(g, y, arg(node, 2, "weight"), arg(node, 3, "bias"), [1, C, 1, 1])
