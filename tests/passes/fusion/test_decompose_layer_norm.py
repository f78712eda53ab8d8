from __future__ import annotations

import torch

from lgc.passes.fusion.decompose_layer_norm import DecomposeLayerNorm
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class NormLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(32)
        torch.nn.init.normal_(self.norm.weight)
        torch.nn.init.normal_(self.norm.bias)
        self.lin = torch.nn.Linear(32, 32)

    def forward(self, x):
        return self.lin(self.norm(x))


def test_rewrites_layer_norm_exactly():
    x = torch.randn(2, 10, 32) * 2 - 1
    res, before, after, err = run_pass(DecomposeLayerNorm, NormLinear(), x)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.layer_norm.default"] == 1 and after["aten.layer_norm.default"] == 0
    # Row means as products with a constant (1, D) of 1/D: 2 linears besides the model's own, no reshape.
    assert after["aten.linear.default"] == 3 and after.get("aten.mean.dim", 0) == 0
    assert after.get("aten.reshape.default", 0) == 0
    assert err < 1e-4


def test_result_lowers_to_one_delegate():
    x = torch.randn(1, 10, 32)
    before, after = delegation_before_after(DecomposeLayerNorm, NormLinear(), x)
    assert before["nondelegated_ops"].get("aten_native_layer_norm_default") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after


def test_layer_norm_over_two_dims_is_left_alone():
    res, before, after, err = run_pass(DecomposeLayerNorm, torch.nn.LayerNorm([4, 8]), torch.randn(2, 4, 8))
    assert not res.changed and before == after and err == 0
