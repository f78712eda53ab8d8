from __future__ import annotations

import pytest
import torch

from lgc.passes.fusion.split_geglu_chunk import SplitGegluChunk
from lgc.passes.fusion.transformer_as_bc1s import TransformerAsBc1s
from lgc.passes.fusion.unmask_attention import UnmaskAttention
from tests.passes.fusion.conftest import run_pass, state_of

HEADS = 2


class Transformers(torch.nn.Module):
    """``blocks`` diffusers transformer regions in a row, each with self- and cross-attention over the same text."""

    def __init__(self, blocks=1, linear_projection=False):
        super().__init__()
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        torch.manual_seed(0)
        self.t = torch.nn.ModuleList(
            Transformer2DModel(num_attention_heads=HEADS, attention_head_dim=8, in_channels=16, norm_num_groups=4,
                               cross_attention_dim=12, use_linear_projection=linear_projection) for _ in range(blocks))

    def forward(self, x, text):
        for t in self.t:
            x = t(x, encoder_hidden_states=text, return_dict=False)[0]
        return x


def inputs():
    return torch.randn(2, 16, 6, 5), torch.randn(2, 7, 12)  # a 6x5 image: height and width kept apart


def rewrite(module, *args, **config):
    """The graph as the iOS pipeline gives it to the pass, then the pass: (result, ops before, ops after, max error)."""
    return run_pass(TransformerAsBc1s, module, *args, first=(UnmaskAttention, SplitGegluChunk), **config)


@pytest.mark.parametrize("linear_projection", [False, True], ids=["conv-proj", "linear-proj (SD-2)"])
def test_region_becomes_convs_and_per_head_attention_exactly(linear_projection):
    res, before, after, err = rewrite(Transformers(linear_projection=linear_projection), *inputs())
    assert res.details == {"regions": {"unet": 1}, "attention": {"unet": 2}}
    # Every projection a 1x1 conv; the layer norms as channel statistics; no (B, S, C) layout left.
    assert after.get("aten.linear.default", 0) == 0 and after.get("aten.layer_norm.default", 0) == 0
    assert after["aten.conv2d.default"] == before.get("aten.conv2d.default", 0) + before["aten.linear.default"]
    assert after["aten.mean.dim"] == 2 * before["aten.layer_norm.default"]
    assert after.get("aten.permute.default", 0) == 0 and after.get("aten.view.default", 0) == 0
    # Per head: one bmm pair and one softmax, over the keys axis; the one transpose each is k's (folded
    # into matmul by Core ML), plus one for the text states coming in.
    assert after["aten.bmm.default"] == 2 * HEADS * 2 and after["aten.softmax.int"] == HEADS * 2
    assert after["aten.transpose.int"] == HEADS * 2 + 1
    assert after["aten.cat.default"] == 2
    assert err < 1e-5


def test_batched_heads_keep_one_bmm_pair_per_attention():
    res, before, after, err = rewrite(Transformers(), *inputs(), split_heads=False)
    assert res.changed and after["aten.bmm.default"] == before["aten.bmm.default"] == 4
    assert after["aten.softmax.int"] == 2 and after.get("aten.cat.default", 0) == 0
    assert err < 1e-5


def test_text_states_are_transposed_once_for_every_region():
    res, before, after, err = rewrite(Transformers(blocks=3), *inputs())
    assert res.details["regions"] == {"unet": 3}
    assert after["aten.transpose.int"] == 3 * HEADS * 2 + 1  # k per head, and the text states once
    assert err < 1e-5


class UnknownInside(torch.nn.Module):
    """A (B, S, C) region holding an op the rewrite does not know (a cumulative sum along the sequence)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        b, c, h, w = x.shape
        s = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        s = self.proj(s).cumsum(1)
        return s.reshape(b, h, w, c).permute(0, 3, 1, 2)


def test_region_with_an_unknown_op_is_left_as_it_was():
    x = torch.randn(2, 16, 6, 5)
    state = state_of(UnknownInside(), x)
    gm = state.model.components["unet"].graph
    code = gm.code
    res = TransformerAsBc1s().run(state, TransformerAsBc1s.Config())
    assert not res.changed and gm.code == code
    assert len([n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]) == 1


def test_components_not_named_are_not_touched():
    res, before, after, err = rewrite(Transformers(), *inputs(), components=("text_encoder",))
    assert not res.changed and before == after and err < 1e-5
