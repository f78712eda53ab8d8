from __future__ import annotations

import torch
import torch.nn.functional as F

from lgc.passes.fusion.unmask_attention import UnmaskAttention
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class Attn(torch.nn.Module):
    """diffusers-style attention: separate q/k/v projections, heads split by view + transpose."""

    def __init__(self, causal=False):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.causal = causal

    def forward(self, x):
        def heads(t):
            return t.view(1, -1, 2, 8).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=self.causal)
        return o.transpose(1, 2).reshape(1, -1, 16)


def test_rewrites_sdpa_exactly():
    x = torch.randn(1, 12, 16)
    res, before, after, err = run_pass(UnmaskAttention, Attn(), x)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.scaled_dot_product_attention.default"] == 1
    assert after["aten.scaled_dot_product_attention.default"] == 0
    assert after["aten.bmm.default"] == 2 and after["aten.softmax.int"] == 1
    assert err < 1e-5


def test_causal_attention_is_left_alone():
    res, before, after, err = run_pass(UnmaskAttention, Attn(causal=True), torch.randn(1, 12, 16))
    assert not res.changed and before == after and err == 0


def test_mask_glue_is_gone_after_lowering():
    x = torch.randn(1, 12, 16)
    before, after = delegation_before_after(UnmaskAttention, Attn(), x)
    assert before["nondelegated_compute_ops"] > 0
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after


class MaskedAttn(Attn):
    """Attention with a mask given as a tensor (CLIP's causal mask, or one with a fully masked row)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        def heads(t):
            return t.view(1, -1, 2, 8).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=self.mask)
        return o.transpose(1, 2).reshape(1, -1, 16)


def test_constant_boolean_mask_becomes_an_additive_bias():
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    x = torch.randn(1, 12, 16)
    res, _, after, err = run_pass(UnmaskAttention, MaskedAttn(causal), x)
    assert res.changed and after["aten.scaled_dot_product_attention.default"] == 0
    assert after["aten.add.Tensor"] >= 1 and err < 1e-5


def test_float_mask_per_head_is_kept_per_head():
    bias = torch.randn(1, 2, 12, 12)
    x = torch.randn(1, 12, 16)
    res, _, _, err = run_pass(UnmaskAttention, MaskedAttn(bias), x)
    assert res.changed and err < 1e-5


def test_fully_masked_row_is_left_to_sdpa():
    mask = torch.ones(1, 1, 12, 12, dtype=torch.bool)
    mask[..., 3, :] = False  # SDPA returns zeros for that row; a softmax over -inf would not
    res, before, after, _ = run_pass(UnmaskAttention, MaskedAttn(mask), torch.randn(1, 12, 16))
    assert not res.changed and before == after
