"""Rewrite ``chunk`` into two ``slice`` ops (GEGLU's gate split)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import finish, graphs, shape_of

aten = torch.ops.aten


@register_pass
class SplitGegluChunk(Pass):
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

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("text_encoder", "unet", "vae_decoder", "vae_encoder")  # graphs to rewrite

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, gm in graphs(state, config.components):
            n = 0
            for node in list(gm.graph.nodes):
                if node.target != aten.chunk.default:
                    continue
                x, chunks = node.args[0], node.args[1]
                dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
                shape = shape_of(x)
                users = list(node.users)
                if shape is None or shape[dim] % chunks or not all(u.target.__name__ == "getitem" for u in users):
                    continue
                size = shape[dim] // chunks
                g = gm.graph
                for u in users:
                    i = u.args[1]
                    with g.inserting_before(u):
                        sl = g.call_function(aten.slice.Tensor, (x, dim, i * size, (i + 1) * size))
                    u.replace_all_uses_with(sl)
                    g.erase_node(u)
                g.erase_node(node)
                n += 1
            if n:
                finish(gm)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
