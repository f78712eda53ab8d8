"""Rewrite GroupNorm into channels-last-friendly ops XNNPACK delegates: pooling, grouped 1x1 conv, arithmetic."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, reshaped, shape_of

aten = torch.ops.aten


def normalize(g: torch.fx.Graph, x, mean_of, eps: float):
    """``(x - E[x]) * rsqrt(E[(x - E[x])^2] + eps)``, with ``mean_of(v)`` the statistic's mean broadcastable to ``x``.

    Two passes over the data (centre first, then the variance of the centred
    values), as torch's kernels do: ``E[x^2] - E[x]^2`` would cancel badly
    when the mean is large against the spread.
    """
    d = g.call_function(aten.sub.Tensor, (x, mean_of(x)))
    var = mean_of(g.call_function(aten.mul.Tensor, (d, d)))
    inv = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
    return g.call_function(aten.mul.Tensor, (d, inv))


def affine(gm: torch.fx.GraphModule, y, weight, bias, shape=None):
    """``y * weight + bias`` (each optional), the parameters reshaped to ``shape`` when given."""
    g = gm.graph
    if weight is not None:
        y = g.call_function(aten.mul.Tensor, (y, reshaped(gm, weight, shape) if shape else weight))
    if bias is not None:
        y = g.call_function(aten.add.Tensor, (y, reshaped(gm, bias, shape) if shape else bias))
    return y


@register_pass
class DecomposeGroupNorm(NodeRewritePass):
    """Replace ``aten.group_norm`` by ops that keep the tensor 4-D and channels-last, so the U-Net stays one delegate.

    Before: ``group_norm(x[N,C,H,W], G, w, b, eps)`` (XNNPACK has no GroupNorm:
            each one splits the delegate and runs in a portable kernel).
    After:  ``mean(v) = conv1x1(v.mean((2,3), keepdim), A, groups=G)`` with
            ``A`` the constant (C, C/G, 1, 1) block of ``1/(C/G)``: the
            per-channel spatial mean, averaged within each group and already
            broadcast back to every channel of the group; then
            ``d = x - mean(x)``, ``y = d * rsqrt(mean(d*d) + eps) * w + b``
            with ``w``, ``b`` stored as (1, C, 1, 1) constants.
            No reshape touches an activation: an earlier form,
            ``x.reshape(N, G, C/G*H*W, 1)``, made XNNPACK transpose the full
            activation out of channels-last and back around every norm.
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
        if shape is None or len(shape) != 4 or shape[1] % groups:
            return None
        C = shape[1]
        g = gm.graph
        per_group = C // groups
        average = add_constant(gm, f"lgc_group_average_{C}_{groups}", torch.full((C, per_group, 1, 1), 1.0 / per_group))

        def group_mean(v):
            spatial = g.call_function(aten.mean.dim, (v, [2, 3], True))
            return g.call_function(aten.conv2d.default, (spatial, average, None, [1, 1], [0, 0], [1, 1], groups))

        y = normalize(g, x, group_mean, arg(node, 4, "eps", 1e-5))
        return affine(gm, y, arg(node, 2, "weight"), arg(node, 3, "bias"), [1, C, 1, 1])
