from __future__ import annotations

import torch
import torch.nn.functional as F

from lgc.passes.fusion.split_geglu_chunk import SplitGegluChunk
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class GEGLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(16, 64)
        self.out = torch.nn.Linear(32, 16)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


def test_rewrites_chunk_into_slices_exactly():
    x = torch.randn(1, 10, 16)
    res, before, after, err = run_pass(SplitGegluChunk, GEGLU(), x)
    assert res.changed and before["aten.chunk.default"] == 1
    assert after["aten.chunk.default"] == 0 and after["aten.slice.Tensor"] == 2
    assert err == 0


def test_result_lowers_to_one_delegate():
    x = torch.randn(1, 10, 16)
    before, after = delegation_before_after(SplitGegluChunk, GEGLU(), x)
    assert before["nondelegated_compute_ops"] >= 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
