"""Rewrite ``chunk`` into static ``slice`` ops (GEGLU's gate split)."""

from __future__ import annotations

import operator

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, arg, shape_of

aten = torch.ops.aten


@register_pass
class SplitGegluChunk(NodeRewritePass):
    """Replace ``chunk(x, n, dim)`` (used by GEGLU) with ``n`` static slices.

    Before: ``h, gate = proj(x).chunk(2, dim=-1)``, which becomes
            ``split_with_sizes`` in the edge dialect, an op XNNPACK does not take.
    After:  ``h = slice(p, -1, 0, D/2)``, ``gate = slice(p, -1, D/2, D)``
            (``slice_copy`` is delegated). Exact.
    Precondition: the chunked dimension divides evenly (static shapes).
    """

    name = "split_geglu_chunk"
    group = "fusion"
    op_targets = (aten.chunk.default,)

    def rewrite(self, gm, node):
        x, chunks, dim = node.args[0], node.args[1], arg(node, 2, "dim", 0)
        shape = shape_of(x)
        users = list(node.users)
        if shape is None or shape[dim] % chunks or any(u.target is not operator.getitem for u in users):
            return None
        size = shape[dim] // chunks
        g = gm.graph
        for u in users:
            i = u.args[1]
            u.replace_all_uses_with(g.call_function(aten.slice.Tensor, (x, dim, i * size, (i + 1) * size)))
            g.erase_node(u)
        g.erase_node(node)
        return True
