"""Rewrite a wide fp32 K x K convolution as channels-last im2col followed by matrix multiplications (GEMM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import ALL_COMPONENTS, NodeRewritePass, add_constant, arg, constant_of, copy_module_meta, pair, shape_of

aten = torch.ops.aten


def k_chunks(cin: int, taps: int, max_k: int) -> int:
    """Input channels per GEMM: the largest divisor of ``cin`` whose im2col row (taps x channels) fits ``max_k``."""
    for c in range(min(cin, max(1, max_k // taps)), 0, -1):
        if cin % c == 0:
            return c
    return 1


def im2col_gemm(gm, x_nhwc, size: tuple[int, int], row_starts, col_starts, out_hw: tuple[int, int],
                weights: list[torch.Tensor], bias, name: str, chunk: int, like: torch.fx.Node):
    """Emit ``sum over channel chunks of linear(im2col(x_nhwc chunk), W_chunk)`` on a padded NHWC tensor of spatial ``size``.

    Kernel tap (a, b) reads rows ``row_starts[a]`` onwards and columns
    ``col_starts[b]`` onwards, ``out_hw`` of each; ``weights`` holds one
    (N, taps x chunk) matrix per chunk, columns ordered (a, b, channel). The
    patches are built in two steps, the column shifts concatenated first and
    then the row shifts of that: kh + kw slices and two concatenations instead
    of kh * kw slices and one concatenation of kh * kw (XNNPACK takes at most
    5, so ExecuTorch splits a longer one into copies). A 320-channel 3 x 3
    conv at 2 x 64 x 64 went 163 -> 150 ms. Each ``linear`` takes the module
    path of ``like``, the layer it replaces. Returns the (B*rows*cols, N) node.
    """
    g = gm.graph

    def shifted(t, dim, starts, extent, full):
        parts = [t if (s == 0 and extent == full) else g.call_function(aten.slice.Tensor, (t, dim, s, s + extent)) for s in starts]
        return g.call_function(aten.cat.default, (parts, 3)) if len(parts) > 1 else parts[0]

    out = None
    for i, w in enumerate(weights):
        xc = x_nhwc if len(weights) == 1 else g.call_function(aten.slice.Tensor, (x_nhwc, 3, i * chunk, (i + 1) * chunk))
        patches = shifted(shifted(xc, 2, col_starts, out_hw[1], size[1]), 1, row_starts, out_hw[0], size[0])
        flat = g.call_function(aten.reshape.default, (patches, [-1, w.shape[1]]))
        wn = add_constant(gm, f"{name}_gemm{i}", w)
        part = g.call_function(aten.linear.default, (flat, wn, bias if i == 0 else None))
        copy_module_meta(part, like)
        out = part if out is None else g.call_function(aten.add.Tensor, (out, part))
    return out


def worth_a_gemm(config, cin: int, cout: int, taps: int, pixels: int) -> bool:
    """Wide enough and enough work (``pixels``: batch x the positions each tap is applied at) for ``config``'s thresholds."""
    return (cin >= config.min_in_channels and cout >= config.min_out_channels
            and 2 * cin * cout * taps * pixels / 1e6 >= config.min_mflop)


def fp32_conv_operands(gm, node):
    """(input, weight tensor, bias node, input shape) of a conv or transposed conv whose weight and bias are
    fp32 constants of a 4-D input; None otherwise (after PT2E convert a quantized conv's weight is a dequantize node)."""
    x, bias = arg(node, 0, "input"), arg(node, 2, "bias")
    weight, shape = constant_of(gm, arg(node, 1, "weight")), shape_of(x)
    if weight is None or weight.dim() != 4 or weight.dtype != torch.float32 or shape is None or len(shape) != 4:
        return None
    if bias is not None and constant_of(gm, bias) is None:
        return None
    return x, weight, bias, shape


@register_pass
class ConvAsGemm(NodeRewritePass):
    """Rewrite ``conv2d(x, W, b)`` (fp32 weights, stride 1, no dilation, one group) as im2col + GEMM, channels last.

    Before: a 3 x 3 convolution, which XNNPACK (executorch 1.5.1) runs with
            its indirect-GEMM kernel. Measured on this CPU (2 cores, AVX2):
            that kernel reaches 40-60 GFLOP/s on the convolutions of an
            SD-1.5 U-Net (ONNX Runtime's im2col + GEMM 90-160), while
            XNNPACK's plain GEMM reaches 115-127 GFLOP/s when its K (the
            reduction length) is at most a few thousand; beyond that the
            weight panel no longer stays in cache (K = 11,520 for a
            1280-channel 3 x 3 conv: 38 GFLOP/s).
    After:  ``x`` permuted to NHWC and zero-padded; the patches of the
            K x K taps built from slices and concatenations along channels
            (im2col, see ``im2col_gemm``), and one ``linear`` per chunk of
            input channels (``max_k`` bounds taps x chunk), the chunks
            summed; the result reshaped and permuted back to NCHW. All of it
            is delegated (slice, cat, fully-connected, add, transpose). A
            320-channel 3 x 3 conv at 2 x 64 x 64 went 243 -> 150 ms, 640
            channels at 32 x 32 286 -> 143 ms, 1280 at 16 x 16 360 -> 107 ms.
            Narrow or small convs get slower (the im2col copy and the extra
            ops dominate: 64 -> 32 channels at 128 x 128, 17 -> 29 ms), hence
            the thresholds.
    Exact up to fp32 summation order. Runs after quantization and rewrites
    only convs whose weight is still a plain fp32 constant: XNNPACK's
    dynamically quantized convolution beat the same im2col with a dynamically
    quantized GEMM (320 channels: 114 against 141 ms).
    """

    name = "conv_as_gemm"
    group = "fusion"
    op_targets = (aten.conv2d.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ALL_COMPONENTS  # names of the component graphs to rewrite
        min_in_channels: int = 128  # narrower convs stay convs: the im2col copy costs more than the GEMM saves
        min_out_channels: int = 64  # a GEMM with a handful of columns (a U-Net's conv_out) gains nothing
        max_k: int = 2880  # longest GEMM reduction (taps x input channels) before splitting the channels
        # Smaller convs stay convs: below this many MFLOP per call the extra ops (layout transposes,
        # slices, concatenations) cost more than the GEMM saves (9.4 MFLOP: 0.17 -> 0.19 ms; 75: 1.27 -> 0.97 ms).
        min_mflop: float = 50.0

        def __post_init__(self):
            for field in ("min_in_channels", "min_out_channels", "max_k"):
                if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                    raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)!r}")
            if not isinstance(self.min_mflop, (int, float)) or self.min_mflop < 0:
                raise ValueError(f"min_mflop must be a number >= 0, got {self.min_mflop!r}")

    def rewrite(self, gm, node):
        operands = fp32_conv_operands(gm, node)
        if operands is None:
            return None
        x, weight, bias, shape = operands
        cout, cin, kh, kw = weight.shape
        stride, padding, dilation = pair(arg(node, 3, "stride"), 1), pair(arg(node, 4, "padding"), 0), pair(arg(node, 5, "dilation"), 1)
        if (arg(node, 6, "groups", 1) != 1 or stride != [1, 1] or dilation != [1, 1] or isinstance(padding[0], str)
                or kh * kw == 1):
            return None
        bsz, _, h, w = shape
        ph, pw = padding
        oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        if not worth_a_gemm(self.config, cin, cout, kh * kw, bsz * oh * ow):
            return None
        chunk = k_chunks(cin, kh * kw, self.config.max_k)
        # (Cout, Cin, kh, kw) -> per chunk (Cout, kh * kw * chunk), columns in (tap, channel) order like the im2col rows.
        mats = [weight[:, i:i + chunk].permute(0, 2, 3, 1).reshape(cout, -1).contiguous() for i in range(0, cin, chunk)]
        g = gm.graph
        nhwc = g.call_function(aten.permute.default, (x, [0, 2, 3, 1]))
        if ph or pw:
            nhwc = g.call_function(aten.constant_pad_nd.default, (nhwc, [0, 0, pw, pw, ph, ph], 0.0))
        flat = im2col_gemm(gm, nhwc, (h + 2 * ph, w + 2 * pw), range(kh), range(kw), (oh, ow), mats, bias,
                           arg(node, 1, "weight").target, chunk, like=node)
        out = g.call_function(aten.reshape.default, (flat, [bsz, oh, ow, cout]))
        out = g.call_function(aten.permute.default, (out, [0, 3, 1, 2]))
        return out
