"""Split a convolution over a channel concatenation into one convolution per input, so each is quantized with its own range."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, constant_of

aten = torch.ops.aten


def _tag_as_part(new: torch.fx.Node, conv: torch.fx.Node, i: int) -> None:
    """Give a part the conv's module path plus ``.input{i}``: sensitivity ranking and fallback see each part as a layer."""
    stack = dict(conv.meta.get("nn_module_stack", {}))
    if stack:
        path, kind = list(stack.values())[-1]
        stack[f"lgc_split_concat_{i}"] = (f"{path}.input{i}", kind)
    new.meta["nn_module_stack"] = stack
    for key in ("stack_trace", "source_fn_stack", "from_node"):
        if key in conv.meta:
            new.meta[key] = conv.meta[key]


@register_pass
class SplitConcatConv(NodeRewritePass):
    """Rewrite a conv of a channel concatenation of a and b as ``conv(a, W_a, bias) + conv(b, W_b)``.

    Why: a U-Net decoder concatenates its upsampled features with the
    encoder's skip connection, two tensors with very different ranges, and
    a ResNet's ``conv_shortcut`` reads that concatenation directly. In int8
    one activation scale must then cover both, and the narrower one loses
    most of its bits: Q-Diffusion found these "shortcut" concatenations among
    the most sensitive layers, and lgc's own ranking put the reference
    U-Net's two ``up_blocks.2`` ``conv_shortcut``s first. Split, each part
    gets its own range (dynamic activations: at run time, per part).
    Exact in real arithmetic (the conv is linear in its input channels); the
    same MACs, plus one ``add`` per extra part. Other users of the cat (the
    ResNet's GroupNorm) keep it.
    Precondition: ``groups == 1``, constant weight (and bias), concatenation
    over channels of a 4-D tensor.
    """

    name = "split_concat_conv"
    group = "quantization"
    op_targets = (aten.conv2d.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("unet",)  # names of the component graphs to rewrite

    def rewrite(self, gm, node):
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        rest = list(node.args[3:])
        groups = rest[3] if len(rest) > 3 else 1
        if not (isinstance(x, torch.fx.Node) and x.target == aten.cat.default) or groups != 1:
            return None
        dim = x.args[1] if len(x.args) > 1 else 0
        parts = list(x.args[0])
        if dim not in (1, -3) or len(parts) < 2:
            return None
        w = constant_of(gm, weight)
        if w is None or (bias is not None and constant_of(gm, bias) is None):
            return None
        sizes = [p.meta["val"].shape[1] if "val" in p.meta else None for p in parts]
        if None in sizes or sum(sizes) != w.shape[1]:
            return None
        g, start, out = gm.graph, 0, None
        for i, (part, c) in enumerate(zip(parts, sizes)):
            w_i = add_constant(gm, f"{weight.target}_input{i}", w[:, start: start + c].clone())
            start += c
            y = g.call_function(aten.conv2d.default, (part, w_i, bias if i == 0 else None, *rest))
            _tag_as_part(y, node, i)
            out = y if out is None else g.call_function(aten.add.Tensor, (out, y))
        return out
