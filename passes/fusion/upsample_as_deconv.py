"""Rewrite integer-factor nearest upsampling as a depthwise transposed convolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import finish, graphs, shape_of

aten = torch.ops.aten


def _factor(node) -> int | None:
    """The integer scale of an ``upsample_nearest2d`` node, from its static input/output shapes."""
    ins, outs = shape_of(node.args[0]), shape_of(node)
    if ins is None or outs is None or len(ins) != 4:
        return None
    fh, fw = outs[2] / ins[2], outs[3] / ins[3]
    return int(fh) if fh == fw and fh == int(fh) and fh >= 2 else None


@register_pass
class UpsampleAsDeconv(Pass):
    """Replace nearest ``k``x upsampling by ``conv_transpose2d`` with a k x k all-ones depthwise kernel.

    Before: ``upsample_nearest2d(x[N,C,H,W], scale k)``, which XNNPACK 1.5.1
            does not take: the delegate splits before and after every U-Net
            and VAE upsampler.
    After:  ``conv_transpose2d(x, ones(C,1,k,k), stride=k, groups=C)``:
            each input pixel is written to its k x k output block, which is
            exactly nearest upsampling. XNNPACK runs it as a deconvolution.
    Exact (multiplies by 1 and adds nothing). Runs after quantization: it
    only moves data, so quantizing it would add rounding and no speed.
    """

    name = "upsample_as_deconv"
    group = "fusion"
    op_targets = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("text_encoder", "unet", "vae_decoder", "vae_encoder")  # graphs to rewrite

    def run(self, state, config: Config) -> PassResult:
        counts = {}
        for name, gm in graphs(state, config.components):
            n = 0
            for node in list(gm.graph.nodes):
                if node.target not in self.op_targets:
                    continue
                k = _factor(node)
                if k is None:
                    continue
                C = shape_of(node.args[0])[1]
                attr = f"_lgc_upsample_kernel_{n}"
                while hasattr(gm, attr):
                    attr += "_"
                gm.register_buffer(attr, torch.ones(C, 1, k, k))
                g = gm.graph
                with g.inserting_before(node):
                    w = g.get_attr(attr)
                    out = g.call_function(aten.conv_transpose2d.input, (node.args[0], w, None, [k, k], [0, 0], [0, 0], C))
                node.replace_all_uses_with(out)
                g.erase_node(node)
                n += 1
            if n:
                finish(gm)
                counts[name] = n
        return PassResult(bool(counts), {"rewritten": counts})
