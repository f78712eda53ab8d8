"""Give float arithmetic float scalar operands (``x / 3`` -> ``x / 3.0``), so no int64 constant is cast on every call."""

from __future__ import annotations

import torch

from lgc.compiler.pass_manager import register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass

aten = torch.ops.aten
ARITHMETIC = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.rsub.Scalar,
              aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar)


def _is_int(a) -> bool:
    return isinstance(a, int) and not isinstance(a, bool)


@register_pass
class FloatScalarOperands(NodeRewritePass):
    """Turn the Python int operand of a float tensor's add/sub/mul/div into the equal float.

    Before: ``div(x, 3)`` (AutoencoderTiny's ``tanh(x / 3) * 3``, ``(x - 1) / 2``,
            a U-Net's ``* 1``). ExecuTorch's edge lowering lifts the int into
            an int64 0-d constant and casts it to float32 with a
            ``_to_dim_order_copy`` outside the delegate, on every call
            (5 in the reference VAE decoder, 1 in the U-Net).
    After:  ``div(x, 3.0)``: the constant is float32 and the delegate owns it.
            Exact: type promotion turns the int into this same float (ints
            up to 2**24 are exact in float32).
    Only when the tensor operand is floating point (integer arithmetic keeps
    integer semantics).
    """

    name = "float_scalar_operands"
    group = "fusion"
    op_targets = ARITHMETIC

    def rewrite(self, gm, node):
        x = node.args[0]
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or not val.dtype.is_floating_point or not any(_is_int(a) for a in node.args[1:]):
            return None
        node.args = (x, *(float(a) if _is_int(a) else a for a in node.args[1:]))
        return True
