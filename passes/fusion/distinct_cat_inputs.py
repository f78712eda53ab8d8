"""Give a concatenation that repeats a tensor distinct inputs (a U-Net without a mid block concatenates a tensor with itself)."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass

aten = torch.ops.aten


@register_pass
class DistinctCatInputs(NodeRewritePass):
    """Replace each repeated input of ``cat`` by a ``clone`` of it.

    Before: ``cat([h, h], dim)``: in a U-Net without a mid block (BK-SDM
            style) the first up block's skip connection concatenates the
            last down block's output with itself. executorch 1.5.1's XNNPACK
            partitioner counts the *distinct* input nodes of a cat, finds one,
            and leaves the cat outside the delegate ("only support
            concatenation of > 2 tensors, got 1 tensors"): the U-Net splits
            in two and the cat runs in a portable kernel.
    After:  ``cat([h, clone(h)], dim)``; XNNPACK takes both, and removes the
            clone inside the delegate. Exact.
    """

    name = "distinct_cat_inputs"
    group = "fusion"
    op_targets = (aten.cat.default,)

    def rewrite(self, gm, node):
        tensors = list(node.args[0])
        seen, changed = set(), False
        for i, t in enumerate(tensors):
            if t in seen:
                with gm.graph.inserting_before(node):
                    tensors[i] = gm.graph.call_function(aten.clone.default, (t,))
                changed = True
            seen.add(t)
        if not changed:
            return None
        node.args = (tensors, *node.args[1:])
        return True
