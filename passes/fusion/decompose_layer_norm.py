"""Rewrite LayerNorm over the last dimension into ops XNNPACK delegates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import finish, graphs, shape_of

aten = torch.ops.aten


@register_pass
class DecomposeLayerNorm(Pass):
    """Replace ``aten.layer_norm`` over the last dim by mean/sub/mul/rsqrt on a 4-D view.

    Before: ``layer_norm(x[..., D], [D], w, b, eps)`` (left outside the XNNPACK
            delegate in executorch 1.5.1, splitting every transformer block).
    After:  ``v = x.view(rows, D, 1)`` padded to 4-D as ``[1, rows, D, 1]``;
            mean and variance over the two innermost dims (keepdim);
            ``(v - m) * rsqrt(var + eps)`` viewed back, then ``* w + b``.
    Numerically the same as layer_norm up to fp32 rounding. Runs after
    quantization, so the statistics stay in fp32.
    Precondition: normalisation over the last dimension only, static shapes.
    """

    name = "decompose_layer_norm"
    group = "fusion"
    op_targets = (aten.layer_norm.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("text_encoder", "unet", "vae_decoder", "vae_encoder")  # graphs to rewrite

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, gm in graphs(state, config.components):
            n = 0
            for node in list(gm.graph.nodes):
                if node.target != aten.layer_norm.default:
                    continue
                x, normalized = node.args[0], list(node.args[1])
                weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
                bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
                eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
                shape = shape_of(x)
                if shape is None or len(normalized) != 1 or shape[-1] != normalized[0]:
                    continue
                D = shape[-1]
                rows = 1
                for s in shape[:-1]:
                    rows *= s
                g = gm.graph
                with g.inserting_before(node):
                    v = g.call_function(aten.reshape.default, (x, [1, rows, D, 1]))
                    mean = g.call_function(aten.mean.dim, (v, [2, 3], True))
                    d = g.call_function(aten.sub.Tensor, (v, mean))
                    var = g.call_function(aten.mean.dim, (g.call_function(aten.mul.Tensor, (d, d)), [2, 3], True))
                    inv = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
                    y = g.call_function(aten.reshape.default, (g.call_function(aten.mul.Tensor, (d, inv)), list(shape)))
                    if weight is not None:
                        y = g.call_function(aten.mul.Tensor, (y, weight))
                    if bias is not None:
                        y = g.call_function(aten.add.Tensor, (y, bias))
                node.replace_all_uses_with(y)
                g.erase_node(node)
                n += 1
            if n:
                finish(gm)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
