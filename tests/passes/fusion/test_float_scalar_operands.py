from __future__ import annotations

import torch

from lgc.passes.fusion.float_scalar_operands import FloatScalarOperands
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class TinyDecoderTail(torch.nn.Module):
    """AutoencoderTiny's output scaling: ``tanh(x / 3) * 3``, then ``(y - 1) / 2`` style arithmetic, after a conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = torch.tanh(self.conv(x) / 3) * 3
        return (y - 1) / 2


def test_int_operands_become_equal_floats_exactly():
    x = torch.randn(1, 4, 8, 8)
    res, before, after, err = run_pass(FloatScalarOperands, TinyDecoderTail(), x)
    assert res.changed and res.details["rewritten"]["unet"] == 4 and before == after  # same ops, float operands
    assert err == 0


def test_integer_arithmetic_is_left_alone():
    class Count(torch.nn.Module):
        def forward(self, x, n):
            return x + (n * 2).float()

    res, *_ = run_pass(FloatScalarOperands, Count(), torch.randn(3), torch.tensor([2]))
    assert not res.changed


def test_no_cast_is_left_outside_the_delegate():
    before, after = delegation_before_after(FloatScalarOperands, TinyDecoderTail(), torch.randn(1, 4, 8, 8))
    assert before["nondelegated_ops"].get("dim_order_ops__to_dim_order_copy_default", 0) >= 1, before
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
