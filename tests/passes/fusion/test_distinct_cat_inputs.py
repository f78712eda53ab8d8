from __future__ import annotations

import torch

from lgc.passes.fusion.distinct_cat_inputs import DistinctCatInputs
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class SelfSkip(torch.nn.Module):
    """The first up block of a U-Net without a mid block: the skip connection is the block input itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        h = self.down(x)
        return self.up(torch.cat([h, h], dim=1))


def test_repeated_cat_input_becomes_a_clone_exactly():
    x = torch.randn(1, 4, 8, 8)
    res, before, after, err = run_pass(DistinctCatInputs, SelfSkip(), x)
    assert res.changed and before.get("aten.clone.default", 0) == 0
    assert after["aten.cat.default"] == 1 and after["aten.clone.default"] == 1
    assert err == 0


def test_cat_of_distinct_inputs_is_left_alone():
    class Skip(SelfSkip):
        def forward(self, x):
            h = self.down(x)
            return self.up(torch.cat([h, torch.relu(h)], dim=1))

    res, before, after, _ = run_pass(DistinctCatInputs, Skip(), torch.randn(1, 4, 8, 8))
    assert not res.changed and before == after


def test_result_lowers_to_one_delegate():
    before, after = delegation_before_after(DistinctCatInputs, SelfSkip(), torch.randn(1, 4, 8, 8))
    assert before["nondelegated_ops"].get("aten_cat_default") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
