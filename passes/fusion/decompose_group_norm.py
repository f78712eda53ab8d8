"""Rewrite GroupNorm into channels-last-friendly ops XNNPACK delegates: pooling, grouped 1x1 conv, arithmetic."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, constant_of, reshaped, shape_of

aten = torch.ops.aten


def normalize(g: torch.fx.Graph, x, mean_of):
    """``(x - E[x]) * rsqrt(E[(x - E[x])^2] + eps)``.

    ``mean_of(v, plus_eps)`` is the statistic's mean broadcastable to ``x``,
    with eps already added when ``plus_eps``: both norms compute their means
    with a conv or linear, whose bias adds eps for free. A separate
    ``add(var, eps)`` would be one more op, and under XNNPACK its scalar
    operand cannot be channels-last, so the delegate transposed the variance
    out of channels-last and back around it (two transposes per GroupNorm).
    Two passes over the data (centre first, then the variance of the centred
    values), as torch's kernels do: ``E[x^2] - E[x]^2`` would cancel badly
    when the mean is large against the spread.
    """
    d = g.call_function(aten.sub.Tensor, (x, mean_of(x, False)))
    var_eps = mean_of(g.call_function(aten.mul.Tensor, (d, d)), True)
    return g.call_function(aten.mul.Tensor, (d, g.call_function(aten.rsqrt.default, (var_eps,))))


def affine(gm: torch.fx.GraphModule, y, weight, bias):
    """``y * weight + bias`` over the last dimension (each optional)."""
    g = gm.graph
    if weight is not None:
        y = g.call_function(aten.mul.Tensor, (y, weight))
    if bias is not None:
        y = g.call_function(aten.add.Tensor, (y, bias))
    return y


def channel_affine(gm: torch.fx.GraphModule, y, weight, bias, C: int):
    """``y * weight + bias`` per channel of an NCHW tensor, as a depthwise 1x1 conv.

    Why a conv: as ``mul``/``add`` with (1, C, 1, 1) constants, XNNPACK's
    partitioner leaves the constants outside the delegate, feeds them in on
    every call and transposes each to channels-last at run time (50 of the
    reference U-Net's 213 transposes). A conv's weight and bias are the
    delegate's own data, laid out channels-last once, when it is built.
    """
    if weight is None and bias is None:
        return y
    w = constant_of(gm, weight) if weight is not None else None
    b = constant_of(gm, bias) if bias is not None else None
    if (weight is not None and w is None) or (bias is not None and b is None):  # not constants: keep the arithmetic
        return affine(gm, y, *(reshaped(gm, t, [1, C, 1, 1]) if t is not None else None for t in (weight, bias)))
    scale = add_constant(gm, f"{weight.target if w is not None else 'lgc_ones'}_depthwise",
                         (w if w is not None else torch.ones(C)).reshape(C, 1, 1, 1))
    shift = add_constant(gm, f"{bias.target}_depthwise", b.reshape(C)) if b is not None else None
    return gm.graph.call_function(aten.conv2d.default, (y, scale, shift, [1, 1], [0, 0], [1, 1], C))


@register_pass
class DecomposeGroupNorm(NodeRewritePass):
    """Replace ``aten.group_norm`` by ops that keep the tensor 4-D and channels-last, so the U-Net stays one delegate.

    Before: ``group_norm(x[N,C,H,W], G, w, b, eps)`` (XNNPACK has no GroupNorm:
            each one splits the delegate and runs in a portable kernel).
    After:  ``mean(v) = conv1x1(v.mean((2,3), keepdim), A, groups=G)`` with
            ``A`` the constant (C, C/G, 1, 1) block of ``1/(C/G)``: the
            per-channel spatial mean, averaged within each group and already
            broadcast back to every channel of the group; then
            ``d = x - mean(x)``, ``y = d * rsqrt(mean(d*d) + eps) * w + b``,
            eps added by the second mean's conv bias and ``* w + b`` done by
            a depthwise 1x1 conv, so that every constant is a conv's weight
            or bias: the delegate owns those and lays them out channels-last
            ahead of time, where a (1, C, 1, 1) operand of ``mul``/``add``
            costs a run-time transpose on each call.
            No reshape touches an activation: an earlier form,
            ``x.reshape(N, G, C/G*H*W, 1)``, made XNNPACK transpose the full
            activation out of channels-last and back around every norm.
    Inputs of rank 3 or 5 (a (B, C, L) sequence) are viewed as (N, C, L, 1) around
    the same ops.
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
        if shape is None or len(shape) < 3 or shape[1] % groups:
            return None
        C = shape[1]
        g = gm.graph
        if len(shape) != 4:
            # (N, C, L): the KL VAE's mid-block attention normalises its (B, C, H*W) sequence. Viewed
            # as (N, C, L, 1), the same decomposition applies (statistics over all but N and C).
            flat = 1
            for d in shape[2:]:
                flat *= d
            four_d = g.call_function(aten.reshape.default, (x, [shape[0], C, flat, 1]))
            y = self._decompose(gm, node, four_d, groups, C)
            return g.call_function(aten.reshape.default, (y, list(shape)))
        return self._decompose(gm, node, x, groups, C)

    def _decompose(self, gm, node, x, groups: int, C: int):
        g = gm.graph
        per_group = C // groups
        average = add_constant(gm, f"lgc_group_average_{C}_{groups}", torch.full((C, per_group, 1, 1), 1.0 / per_group))
        eps = add_constant(gm, f"lgc_group_eps_{C}", torch.full((C,), float(arg(node, 4, "eps", 1e-5))))

        def group_mean(v, plus_eps):
            spatial = g.call_function(aten.mean.dim, (v, [2, 3], True))
            return g.call_function(aten.conv2d.default, (spatial, average, eps if plus_eps else None, [1, 1], [0, 0], [1, 1], groups))

        return channel_affine(gm, normalize(g, x, group_mean), arg(node, 2, "weight"), arg(node, 3, "bias"), C)
