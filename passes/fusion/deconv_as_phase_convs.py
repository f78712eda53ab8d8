"""Rewrite a strided transposed convolution as one ordinary convolution per output phase, interleaved."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.deconv_as_gemm import interleave_phases, subpixel_plan
from lgc.passes.fusion.graph_utils import ALL_COMPONENTS, NodeRewritePass, add_constant, arg, constant_of, copy_module_meta, shape_of

aten = torch.ops.aten


@register_pass
class DeconvAsPhaseConvs(NodeRewritePass):
    """Rewrite ``conv_transpose2d(x, W, b, stride=s)`` as s x s stride-1 convolutions of ``x``, one per output phase.

    Before: a strided transposed convolution, in lgc's graphs the fused
            nearest-2x-upsample + 3x3 conv (``upsample_conv_as_deconv``: 4 x 4,
            stride 2). Quantized, XNNPACK (executorch 1.5.1) runs it with its
            sub-convolution deconvolution kernel, which on this CPU is 2-4x
            slower than its convolution kernel doing the same multiply-
            accumulates: the SD-1.5 U-Net's three upsamples took 262 ms of
            its 3.9 s int8 step.
    After:  output phase (ra, rb) (rows ``s*q + ra``, columns ``s*p + rb``) is
            a correlation of the padded ``x`` with a (2 x 2 here) sub-kernel
            of ``W``: one ``conv2d`` each, on the window of the padded input
            it reads, interleaved by reshapes and concatenations. The same
            multiply-accumulates; each phase conv is quantized as a layer of
            its own (its own per-channel weight scales), under the module
            path of the transposed conv.
    Runs before quantization, so the quantizer annotates the phase convs.
    Exact up to fp32 summation order. Left alone: grouped, dilated or
    output-padded transposed convs, and ones whose phases differ in size.
    """

    name = "deconv_as_phase_convs"
    group = "fusion"
    op_targets = (aten.conv_transpose2d.input,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ALL_COMPONENTS  # names of the component graphs to rewrite
        # Measured on this CPU, int8, one op each (nearest 2x + 3x3 at batch 2): 640 and 1280
        # channels 0.35-0.45x of the deconvolution; 320 channels 0.93-1.0x; 64-128 channels
        # 1.06-2.2x (the interleave's copies and four ops' overhead outweigh the convolutions).
        min_in_channels: int = 512

    def rewrite(self, gm, node):
        weight = constant_of(gm, arg(node, 1, "weight"))
        shape = shape_of(node.args[0])
        if weight is None or shape is None or len(shape) != 4:
            return None
        cin, cout = weight.shape[:2]
        plan = subpixel_plan(node, weight.shape, shape) if cin >= self.config.min_in_channels else None
        if plan is None:
            return None
        stride, (th, tw), (off_h, off_w), (qh, qw) = plan.stride, plan.taps, plan.offsets, plan.phase_shape
        lo_h, hi_h, lo_w, hi_w = plan.pad
        g = gm.graph
        x = node.args[0]
        if lo_h or hi_h or lo_w or hi_w:
            x = g.call_function(aten.constant_pad_nd.default, (x, [lo_w, hi_w, lo_h, hi_h], 0.0))
        bias = arg(node, 2, "bias")
        bias_value = constant_of(gm, bias) if bias is not None else None
        phases = []
        for ra in range(stride[0]):
            row = []
            for rb in range(stride[1]):
                kernel = plan.kernel(weight, ra, rb).contiguous()
                top, left = off_h[ra] + lo_h, off_w[rb] + lo_w
                window = g.call_function(aten.slice.Tensor, (x, 2, top, top + qh + th - 1))
                window = g.call_function(aten.slice.Tensor, (window, 3, left, left + qw + tw - 1))
                k = add_constant(gm, f"{arg(node, 1, 'weight').target}_phase{ra}{rb}", kernel)
                # A bias node of its own (add_constant makes one per call, over one buffer): XNNPACKQuantizer
                # skips a conv whose bias node another conv's annotation already claimed.
                b = add_constant(gm, f"{bias.target}_phases", bias_value) if bias_value is not None else bias
                conv = g.call_function(aten.conv2d.default, (window, k, b))
                copy_module_meta(conv, node)
                row.append(conv)
            phases.append(row)
        return interleave_phases(g, phases, stride[0], stride[1], [shape[0], cout, qh, qw], h_axis=2)
