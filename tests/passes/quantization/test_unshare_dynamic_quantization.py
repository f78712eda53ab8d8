"""Cross-attention K/V projections sharing one dynamic quantize chain: one XNNPACK delegate after the pass."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from lgc.compiler.pass_manager import op_histogram
from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer
from lgc.passes.quantization.unshare_dynamic_quantization import UnshareDynamicQuantization
from tests.passes.fusion.conftest import lower_and_count, state_of


class CrossAttention(torch.nn.Module):
    """Q from the image tokens, K and V both from the text embedding (one tensor, two projections)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.out = (torch.nn.Linear(8, 8) for _ in range(4))

    def forward(self, x, ctx):
        scores = torch.softmax(torch.bmm(self.q(x), self.k(ctx).transpose(1, 2)), -1)
        return self.out(torch.bmm(scores, self.v(ctx)))


def dynamic_int8_state():
    x, ctx = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    state = state_of(CrossAttention(), x, ctx)
    comp = state.model.components["unet"]
    comp.graph = prepare_pt2e(comp.graph, xnnpack_quantizer(True, None, False, dynamic=True))
    comp.graph(x, ctx)
    comp.graph = convert_pt2e(comp.graph)
    return state, comp, (x, ctx)


def test_each_projection_gets_its_own_chain_and_one_delegate_remains():
    state, comp, inputs = dynamic_int8_state()
    before_lowered = lower_and_count(comp.graph, inputs)
    assert before_lowered["delegate_subgraphs"] == 2  # K and V with their shared chain, apart from the rest
    with torch.no_grad():
        expected = comp.graph(*inputs)
    chains = op_histogram(comp.graph)["quantized_decomposed.choose_qparams.tensor"]

    res = UnshareDynamicQuantization().run(state, UnshareDynamicQuantization.Config())

    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert op_histogram(comp.graph)["quantized_decomposed.choose_qparams.tensor"] == chains + 1
    with torch.no_grad():
        assert torch.equal(comp.graph(*inputs), expected)  # the same ranges, so the same numbers
    after = lower_and_count(comp.graph, inputs)
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
    assert after["xnnpack_ops"]["Convert"] == before_lowered["xnnpack_ops"]["Convert"] + 1


def test_unshared_chains_are_left_alone():
    state, comp, _ = dynamic_int8_state()
    UnshareDynamicQuantization().run(state, UnshareDynamicQuantization.Config())
    assert not UnshareDynamicQuantization().run(state, UnshareDynamicQuantization.Config()).changed
