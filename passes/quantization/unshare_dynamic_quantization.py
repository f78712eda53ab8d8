"""Give each consumer of a dynamically quantized tensor its own quantize chain, so XNNPACK keeps one delegate."""

from __future__ import annotations

import operator

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass

# Registers the quantized_decomposed ops (PT2E's convert would, but this module may be imported first).
import torch.ao.quantization.fx._decomposed  # noqa: E402,F401

qd = torch.ops.quantized_decomposed


def dynamic_chain(dq: torch.fx.Node):
    """(choose_qparams, quantize) behind a dynamic ``dequantize_per_tensor.tensor``, else None."""
    q = dq.args[0]
    if not (isinstance(q, torch.fx.Node) and q.target == qd.quantize_per_tensor.tensor):
        return None
    scale = q.args[1]
    if not (isinstance(scale, torch.fx.Node) and scale.target == operator.getitem):
        return None
    choose = scale.args[0]
    if not (isinstance(choose, torch.fx.Node) and choose.target == qd.choose_qparams.tensor):
        return None
    return choose, q


@register_pass
class UnshareDynamicQuantization(NodeRewritePass):
    """Duplicate a shared dynamic ``choose_qparams -> quantize -> dequantize`` chain, one per consumer.

    Before: one chain quantizing a tensor that several layers read (in a
            U-Net, the text embedding that every cross-attention's K and V
            projections take), feeding all of them. XNNPACK's partitioner
            takes each dynamically quantized linear together with its input
            chain, so all the linears sharing a chain become one group; that
            group cannot merge with the rest, and the int8 U-Net lowered to
            two delegates (the 12 K/V projections apart, their outputs handed
            from one delegate to the other on every step).
    After:  each consumer has its own chain on the same source tensor; in
            XNNPACK each chain is one ``Convert`` (per-tensor range and cast of
            a (2, 16, 64) embedding here: negligible next to the projection).
            Numerically identical: every chain computes the same range.
    Runs after ``convert_pt2e``, which creates the chains.
    """

    name = "unshare_dynamic_quantization"
    group = "quantization"
    op_targets = (qd.dequantize_per_tensor.tensor,)

    def rewrite(self, gm, node):
        chain = dynamic_chain(node)
        if chain is None or len(node.users) < 2:
            return None
        choose, q = chain
        g = gm.graph
        for user in list(node.users)[1:]:
            with g.inserting_before(user):
                c = g.call_function(choose.target, choose.args, choose.kwargs)
                scale, zero = (g.call_function(operator.getitem, (c, i)) for i in (0, 1))
                args = (q.args[0], scale, zero, *q.args[3:])
                dq = g.call_function(node.target, (g.call_function(q.target, args, q.kwargs), scale, zero, *node.args[3:]), node.kwargs)
            user.replace_input_with(node, dq)
        return True
