"""Rewrite GroupNorm into the mean/sub/mul/rsqrt ops XNNPACK delegates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import finish, graphs, shape_of

aten = torch.ops.aten


@register_pass
class DecomposeGroupNorm(Pass):
    """Replace ``aten.group_norm`` by arithmetic on a 4-D view, so the U-Net stays inside one delegate.

    Before: ``group_norm(x[N,C,H,W], G, w, b, eps)`` (XNNPACK has no GroupNorm:
            each one splits the delegate and runs in a portable kernel).
    After:  ``v = x.view(N, G, C/G*H*W, 1)``; ``m = v.mean((2,3), keepdim)``;
            ``d = v - m``; ``y = d * rsqrt((d*d).mean((2,3), keepdim) + eps)``;
            ``y.view(N,C,H,W) * w.view(1,C,1,1) + b.view(1,C,1,1)``.
            XNNPACK takes 4-D ``mean.dim`` over the two innermost dims only,
            hence the trailing singleton dimension.
    Numerically the same as group_norm up to fp32 rounding. Runs after
    quantization in the pipeline, so the statistics stay in fp32.
    Precondition: static shapes (every lgc component has them).
    """

    name = "decompose_group_norm"
    group = "fusion"
    op_targets = (aten.group_norm.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("text_encoder", "unet", "vae_decoder", "vae_encoder")  # graphs to rewrite

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, gm in graphs(state, config.components):
            n = 0
            for node in list(gm.graph.nodes):
                if node.target != aten.group_norm.default:
                    continue
                x, groups = node.args[0], node.args[1]
                weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
                bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
                eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
                shape = shape_of(x)
                if shape is None or len(shape) != 4:
                    continue
                N, C, H, W = shape
                g = gm.graph
                with g.inserting_before(node):
                    v = g.call_function(aten.reshape.default, (x, [N, groups, C // groups * H * W, 1]))
                    mean = g.call_function(aten.mean.dim, (v, [2, 3], True))
                    d = g.call_function(aten.sub.Tensor, (v, mean))
                    var = g.call_function(aten.mean.dim, (g.call_function(aten.mul.Tensor, (d, d)), [2, 3], True))
                    inv = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
                    y = g.call_function(aten.reshape.default, (g.call_function(aten.mul.Tensor, (d, inv)), [N, C, H, W]))
                    if weight is not None:
                        y = g.call_function(aten.mul.Tensor, (y, g.call_function(aten.reshape.default, (weight, [1, C, 1, 1]))))
                    if bias is not None:
                        y = g.call_function(aten.add.Tensor, (y, g.call_function(aten.reshape.default, (bias, [1, C, 1, 1]))))
                node.replace_all_uses_with(y)
                g.erase_node(node)
                n += 1
            if n:
                finish(gm)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
