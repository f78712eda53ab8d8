from __future__ import annotations

import torch

from lgc.passes.fusion.expand_as_multiply import ExpandAsMultiply
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class TimestepToBatch(torch.nn.Module):
    """How diffusers U-Nets start: the timestep broadcast to the batch, then a sinusoid and a linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)

        self.register_buffer("freqs", torch.linspace(0.0, 1.0, 8)[None, :])

    def forward(self, x, t):
        t = t.expand(x.shape[0]).reshape(-1, 1)
        return x + self.lin(torch.sin(t * self.freqs))


def test_small_expand_becomes_an_exact_multiply():
    args = (torch.randn(2, 8), torch.tensor([500.0]))
    res, before, after, err = run_pass(ExpandAsMultiply, TimestepToBatch(), *args)
    assert res.changed and before["aten.expand.default"] == 1
    assert after.get("aten.expand.default", 0) == 0 and after["aten.mul.Tensor"] == before.get("aten.mul.Tensor", 0) + 1
    assert err == 0


def test_large_expand_is_left_alone():
    args = (torch.randn(2, 8), torch.tensor([500.0]))
    res, before, after, _ = run_pass(ExpandAsMultiply, TimestepToBatch(), *args, max_elements=1)
    assert not res.changed and after["aten.expand.default"] == 1


def test_result_lowers_to_one_delegate():
    args = (torch.randn(2, 8), torch.tensor([500.0]))
    before, after = delegation_before_after(ExpandAsMultiply, TimestepToBatch(), *args)
    assert before["nondelegated_ops"].get("aten_expand_copy_default") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
