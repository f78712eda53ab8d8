"""Rewrite a wide fp32 strided transposed convolution as one sub-pixel im2col + GEMM, channels last."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.conv_as_gemm import ConvAsGemm, fp32_conv_operands, im2col_gemm, k_chunks, worth_a_gemm
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, constant_of, pair

aten = torch.ops.aten


def phase_taps(kernel: int, stride: int, padding: int) -> tuple[int, list[int], list[list[int]]] | None:
    """How each output phase of a 1-D transposed convolution reads its input, or None when the phases differ in size.

    Output ``o = stride * q + r`` sums ``x[i] * w[o + padding - stride * i]``:
    for phase ``r`` that is a correlation over ``taps`` consecutive inputs
    starting at ``q + offset[r]``, with kernel indices ``index[r]`` in window
    order. Returns (taps, offset per phase, kernel index per phase and tap).
    """
    offsets, indices, counts = [], [], set()
    for r in range(stride):
        c, d = (r + padding) % stride, (r + padding) // stride
        ks = list(range(c, kernel, stride))  # kernel indices of this phase; ks[m] multiplies x[q + d - m]
        counts.add(len(ks))
        offsets.append(d - len(ks) + 1)
        indices.append(ks[::-1])  # window tap t reads x[q + offset + t], i.e. m = taps - 1 - t
    return (counts.pop(), offsets, indices) if len(counts) == 1 and 0 not in counts else None


@dataclass(frozen=True)
class SubpixelPlan:
    """How a strided transposed convolution splits into stride_h x stride_w output phases, per axis (rows, columns)."""

    stride: list[int]
    taps: tuple[int, int]  # input taps each phase reads
    offsets: tuple[list[int], list[int]]  # per phase: where its window starts, relative to the output position
    indices: tuple[list[list[int]], list[list[int]]]  # per phase and window tap: the kernel index
    phase_shape: tuple[int, int]  # (Qh, Qw): each phase's output size
    pad: tuple[int, int, int, int]  # (top, bottom, left, right): padding that keeps every phase's window inside the input

    def kernel(self, weight: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
        """Phase (ra, rb)'s correlation kernel (Cout, Cin, taps_h, taps_w), from the transposed conv's (Cin, Cout, kh, kw)."""
        return weight.permute(1, 0, 2, 3)[:, :, self.indices[0][ra]][:, :, :, self.indices[1][rb]]


def subpixel_plan(node: torch.fx.Node, weight_shape, input_shape) -> SubpixelPlan | None:
    """The phase decomposition of ``conv_transpose2d`` ``node``, or None (grouped, dilated, output-padded, stride 1, uneven phases)."""
    stride, padding = pair(arg(node, 3, "stride"), 1), pair(arg(node, 4, "padding"), 0)
    out_pad, dilation = pair(arg(node, 5, "output_padding"), 0), pair(arg(node, 7, "dilation"), 1)
    if arg(node, 6, "groups", 1) != 1 or dilation != [1, 1] or out_pad != [0, 0] or stride == [1, 1]:
        return None
    _, _, kh, kw = weight_shape
    h, w = input_shape[2:]
    axes = [phase_taps(k, s, p) for k, s, p in zip((kh, kw), stride, padding)]
    outs = [(n - 1) * s - 2 * p + k for n, s, p, k in zip((h, w), stride, padding, (kh, kw))]
    if None in axes or any(o % s for o, s in zip(outs, stride)):
        return None
    (th, off_h, idx_h), (tw, off_w, idx_w) = axes
    qh, qw = outs[0] // stride[0], outs[1] // stride[1]
    lo_h, lo_w = max(0, -min(off_h)), max(0, -min(off_w))
    hi_h, hi_w = max(0, qh - 1 + max(off_h) + th - h), max(0, qw - 1 + max(off_w) + tw - w)
    return SubpixelPlan(stride, (th, tw), (off_h, off_w), (idx_h, idx_w), (qh, qw), (lo_h, hi_h, lo_w, hi_w))


def interleave_phases(g, phases, stride_h: int, stride_w: int, shape: list[int], h_axis: int = 1):
    """Phase tensors ``phases[ra][rb]`` of ``shape`` into one: out[.., sh*q+ra, sw*p+rb, ..] = phases[ra][rb][.., q, p, ..].

    ``h_axis``: where the rows are, the columns right after them (1: NHWC, 2: NCHW).
    """
    w_axis = h_axis + 1

    def stack(nodes, shape, dim):
        # A reshape adds the new axis: XNNPACK (executorch 1.5.1) takes a view, not an unsqueeze.
        parts = [g.call_function(aten.reshape.default, (n, shape[:dim] + [1] + shape[dim:])) for n in nodes]
        return g.call_function(aten.cat.default, (parts, dim)) if len(parts) > 1 else parts[0]

    wide = list(shape)
    wide[w_axis] *= stride_w
    rows = [g.call_function(aten.reshape.default, (stack(row, list(shape), w_axis + 1), wide)) for row in phases]
    out = list(wide)
    out[h_axis] *= stride_h
    return g.call_function(aten.reshape.default, (stack(rows, wide, h_axis + 1), out))


@register_pass
class DeconvAsGemm(NodeRewritePass):
    """Rewrite ``conv_transpose2d(x, W, b, stride=s)`` (fp32 weights) as one GEMM over low-resolution patches, then a pixel interleave.

    Before: a strided transposed convolution, in lgc's graphs the fused
            nearest-2x-upsample + 3x3 conv (``upsample_conv_as_deconv``: a
            4 x 4, stride-2 kernel). XNNPACK (executorch 1.5.1) runs fp32
            ones with its sub-convolution kernel, which measured 2.8 s for
            one 1280-channel upsample of an SD-1.5 U-Net at 2 x 16 x 16 on
            this CPU (ONNX Runtime: 0.30 s); the three upsamples took 3.7 of
            the U-Net's 25 s.
    After:  each of the s x s output phases is a plain correlation of ``x``
            with a sub-kernel (2 x 2 taps here). When every phase has the
            same number of taps, one im2col of the padded NHWC input serves
            all of them: one ``linear`` with s*s*Cout outputs (channel
            chunks summed, as in ``conv_as_gemm``), each phase a slice of
            its result, the phases interleaved by reshapes and
            concatenations, then permuted back to NCHW. The same multiply-
            accumulates as the transposed convolution, all in XNNPACK's GEMM.
    Exact up to fp32 summation order. Runs after quantization and rewrites
    only transposed convs whose weight is still fp32: int8 ones are
    ``deconv_as_phase_convs``'s (XNNPACK's quantized deconvolution does not
    have the fp32 one's problem, but is still slower than its convolutions).
    """

    name = "deconv_as_gemm"
    group = "fusion"
    op_targets = (aten.conv_transpose2d.input,)

    # The same thresholds as conv_as_gemm: narrow transposed convs stay XNNPACK deconvolutions.
    Config = ConvAsGemm.Config

    def rewrite(self, gm, node):
        operands = fp32_conv_operands(gm, node)
        if operands is None:
            return None
        x, weight, bias, shape = operands
        cin, cout, kh, kw = weight.shape
        bsz, _, h, w = shape
        if not worth_a_gemm(self.config, cin, cout, kh * kw, bsz * h * w):
            return None
        plan = subpixel_plan(node, weight.shape, shape)
        if plan is None:
            return None
        stride, (th, tw), (off_h, off_w), (qh, qw) = plan.stride, plan.taps, plan.offsets, plan.phase_shape
        # Padded so that every phase's windows lie inside the tensor; the im2col covers the union of their positions.
        lo_h, hi_h, lo_w, hi_w = plan.pad
        jh, jw = qh + max(off_h) - min(off_h), qw + max(off_w) - min(off_w)
        r0, c0 = min(off_h) + lo_h, min(off_w) + lo_w
        # GEMM rows (phase h, phase w, cout), columns (tap h, tap w, cin): each phase's correlation kernel.
        full = torch.stack([torch.stack([plan.kernel(weight, ra, rb) for rb in range(stride[1])]) for ra in range(stride[0])])
        full = full.permute(0, 1, 2, 4, 5, 3)  # (sh, sw, Cout, th, tw, Cin)
        chunk = k_chunks(cin, th * tw, self.config.max_k)
        n = stride[0] * stride[1] * cout
        mats = [full[..., i:i + chunk].reshape(n, -1).contiguous() for i in range(0, cin, chunk)]
        g = gm.graph
        big_bias = None
        if bias is not None:
            big_bias = add_constant(gm, f"{bias.target}_phases", constant_of(gm, bias).repeat(stride[0] * stride[1]))
        nhwc = g.call_function(aten.permute.default, (x, [0, 2, 3, 1]))
        if lo_h or hi_h or lo_w or hi_w:
            nhwc = g.call_function(aten.constant_pad_nd.default, (nhwc, [0, 0, lo_w, hi_w, lo_h, hi_h], 0.0))
        flat = im2col_gemm(gm, nhwc, (h + lo_h + hi_h, w + lo_w + hi_w), [r0 + a for a in range(th)], [c0 + b for b in range(tw)],
                           (jh, jw), mats, big_bias, arg(node, 1, "weight").target, chunk, like=node)
        y = g.call_function(aten.reshape.default, (flat, [bsz, jh, jw, n]))
        phases = []
        for ra in range(stride[0]):
            row = []
            for rb in range(stride[1]):
                p = g.call_function(aten.slice.Tensor, (y, 1, off_h[ra] - min(off_h), off_h[ra] - min(off_h) + qh))
                p = g.call_function(aten.slice.Tensor, (p, 2, off_w[rb] - min(off_w), off_w[rb] - min(off_w) + qw))
                k = (ra * stride[1] + rb) * cout
                row.append(g.call_function(aten.slice.Tensor, (p, 3, k, k + cout)))
            phases.append(row)
        out = interleave_phases(g, phases, stride[0], stride[1], [bsz, qh, qw, cout])
        return g.call_function(aten.permute.default, (out, [0, 3, 1, 2]))
