"""Rewrite integer-factor nearest upsampling as a depthwise transposed convolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import PassResult, register_pass
from lgc.passes.fusion.graph_utils import ALL_COMPONENTS, NodeRewritePass, shape_of

aten = torch.ops.aten


def upsample_factor(node) -> int | None:
    """The integer scale of an ``upsample_nearest2d`` node, from its static input/output shapes."""
    ins, outs = shape_of(node.args[0]), shape_of(node)
    if ins is None or outs is None or len(ins) != 4:
        return None
    fh, fw = outs[2] / ins[2], outs[3] / ins[3]
    return int(fh) if fh == fw and fh == int(fh) and fh >= 2 else None


@register_pass
class UpsampleAsDeconv(NodeRewritePass):
    """Replace nearest ``k``x upsampling by ``conv_transpose2d`` with a k x k all-ones depthwise kernel.

    Before: ``upsample_nearest2d(x[N,C,H,W], scale k)``, which XNNPACK in
            executorch 1.5.1 does not take: the delegate splits before and
            after every U-Net and VAE upsampler.
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
        components: tuple = ALL_COMPONENTS  # names of the component graphs to rewrite
        # Outputs with more pixels (H x W) stay nearest upsampling outside the
        # delegate: XNNPACK's depthwise deconvolution is slow at high
        # resolution (reference VAE decoder, upsampling to 64 and 128 px:
        # 18.4 ms with every upsample rewritten, 8.8 ms with none), while at
        # U-Net resolutions it costs nothing and keeps the delegate whole.
        max_output_pixels: int = 32 * 32

    def run(self, state, config: Config) -> PassResult:
        self._config = config
        return super().run(state, config)

    def rewrite(self, gm, node):
        k = upsample_factor(node)
        out = shape_of(node)
        if k is None or out[2] * out[3] > self._config.max_output_pixels:
            return None
        C = shape_of(node.args[0])[1]
        attr = f"_lgc_upsample_kernel_{k}x_{C}"
        if not hasattr(gm, attr):
            gm.register_buffer(attr, torch.ones(C, 1, k, k))
        g = gm.graph
        return g.call_function(aten.conv_transpose2d.input, (node.args[0], g.get_attr(attr), None, [k, k], [0, 0], [0, 0], C))
