from __future__ import annotations

import torch

from lgc.passes.fusion.fold_constants import FoldConstants
from lgc.passes.fusion.unmask_attention import UnmaskAttention
from tests.passes.fusion.conftest import lower_and_count, run_pass, state_of


class CausalEncoder(torch.nn.Module):
    """CLIP's pattern: a causal mask and position ids built from arange on every call."""

    def __init__(self, S=8, D=16):
        super().__init__()
        torch.manual_seed(0)
        self.pos = torch.nn.Embedding(S, D)
        self.register_buffer("position_ids", torch.arange(S)[None])
        self.q, self.k, self.v = (torch.nn.Linear(D, D) for _ in range(3))
        self.S = S

    def forward(self, x):
        x = x + self.pos(self.position_ids)
        i = torch.arange(self.S)
        mask = (i[None, :] <= i[:, None])[None, None].expand(1, 1, self.S, self.S)
        def heads(t):  # diffusers/transformers style: view + transpose, both delegated
            return t.view(1, self.S, 2, -1).transpose(1, 2)

        o = torch.nn.functional.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=mask)
        return o.transpose(1, 2).reshape(1, self.S, -1)


def test_mask_and_position_lookup_become_constants():
    x = torch.randn(1, 8, 16)
    res, before, after, err = run_pass(FoldConstants, CausalEncoder(), x)
    assert res.changed and res.details["folded_ops"]["unet"] >= 5
    for op in ("aten.arange.start", "aten.le.Tensor", "aten.embedding.default", "aten.expand.default"):
        assert after.get(op, 0) == 0, op
    assert sum(v for k, v in before.items() if "arange" in k) >= 1
    assert after["aten.linear.default"] == 3 and after["aten.scaled_dot_product_attention.default"] == 1
    assert err == 0


def test_input_dependent_ops_are_not_folded():
    class Gather(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            return self.table(ids) * 2

    res, before, after, _ = run_pass(FoldConstants, Gather(), torch.tensor([[1, 2, 3]]))
    assert not res.changed and before == after


def test_large_values_stay_computed():
    class Big(torch.nn.Module):
        def forward(self, x):
            return x + torch.ones(512, 512)

    res, _, after, _ = run_pass(FoldConstants, Big(), torch.randn(512, 512), max_elements=1000)
    assert not res.changed and after.get("aten.ones.default", 0) == 1


def test_with_unmask_attention_the_encoder_is_one_delegate():
    x = torch.randn(1, 8, 16)
    state = state_of(CausalEncoder().eval(), x)
    gm = state.model.components["unet"].graph
    before = lower_and_count(gm, (x,))
    FoldConstants().run(state, FoldConstants.Config())
    UnmaskAttention().run(state, UnmaskAttention.Config())
    after = lower_and_count(state.model.components["unet"].graph, (x,))
    assert before["nondelegated_compute_ops"] >= 5
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
