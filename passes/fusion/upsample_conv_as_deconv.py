"""Fuse nearest upsampling followed by a convolution into one strided transposed convolution at the low resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, arg, constant_of, copy_module_meta, pair
from lgc.passes.fusion.upsample_as_deconv import upsample_factor

aten = torch.ops.aten


def fused_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The transposed-convolution kernel equal to nearest-``k`` upsampling then ``weight`` (Cout, Cin, Kh, Kw).

    Upsampling repeats each pixel over a k x k block: zero insertion (what a
    stride-k transposed convolution does) followed by a k x k box filter. The
    box filter and the conv compose into one (Kh + k - 1, Kw + k - 1) kernel,
    the box's full convolution with ``weight``; a transposed convolution
    takes it flipped, as (Cin, Cout, kh, kw). Computed in float64.
    """
    cout, cin, kh, kw = weight.shape
    w = weight.detach().double().reshape(cout * cin, 1, kh, kw)
    full = F.conv_transpose2d(w, torch.ones(1, 1, k, k, dtype=torch.float64)).reshape(cout, cin, kh + k - 1, kw + k - 1)
    return full.flip(-1, -2).transpose(0, 1).contiguous().to(weight.dtype)


@register_pass
class UpsampleConvAsDeconv(NodeRewritePass):
    """Rewrite ``conv2d(upsample_nearest2d(x, k), W, b, padding=P)`` as ``conv_transpose2d(x, W', b, stride=k, padding=K-1-P)``.

    Before: every diffusers ``Upsample2D`` (U-Net decoder, VAE decoder) is a
            nearest upsample, which XNNPACK in executorch 1.5.1 does not
            take (the delegate splits around it), followed by a K x K conv at
            the high resolution.
    After:  one transposed convolution reading the low-resolution tensor:
            XNNPACK runs it as a deconvolution, the 2x upsampled tensor is
            never materialised, and a 3x3 conv after a 2x upsample needs
            (4x4 / 2x2) = 4 multiply-accumulates per output pixel and input
            channel instead of 9 (2.25x fewer).
    Exact in real arithmetic (float64 kernel, then the weight's dtype). Runs
    before quantization, so the quantizer annotates the transposed conv
    (per output channel, as XNNPACK wants for deconvolutions). Only a conv
    with stride 1, dilation 1, one group and constant weights that is the
    upsample's only user is fused; other upsamples are left to
    ``upsample_as_deconv``.
    """

    name = "upsample_conv_as_deconv"
    group = "fusion"
    op_targets = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)

    def rewrite(self, gm, node):
        k = upsample_factor(node)
        users = list(node.users)
        if k is None or len(users) != 1:
            return None
        conv = users[0]
        if conv.target != aten.conv2d.default or arg(conv, 0, "input") is not node:
            return None
        weight = constant_of(gm, arg(conv, 1, "weight"))
        bias = arg(conv, 2, "bias")
        if weight is None or weight.dim() != 4 or (bias is not None and constant_of(gm, bias) is None):
            return None
        stride, padding, dilation = pair(arg(conv, 3, "stride"), 1), pair(arg(conv, 4, "padding"), 0), pair(arg(conv, 5, "dilation"), 1)
        if arg(conv, 6, "groups", 1) != 1 or stride != [1, 1] or dilation != [1, 1] or isinstance(padding[0], str):
            return None
        pad = [kernel - 1 - p for kernel, p in zip(weight.shape[2:], padding)]
        if min(pad) < 0:
            return None
        with gm.graph.inserting_before(conv):
            w = add_constant(gm, f"{arg(conv, 1, 'weight').target}_upsampled_{k}x", fused_kernel(weight, k))
            new = gm.graph.call_function(aten.conv_transpose2d.input, (node.args[0], w, bias, [k, k], pad, [0, 0], 1, [1, 1]))
        # The conv's module path: sensitivity ranking, fp32 fallback and keep_float_modules name it as before.
        copy_module_meta(new, conv)
        conv.replace_all_uses_with(new)
        gm.graph.erase_node(conv)
        gm.graph.erase_node(node)
        return True
