"""A conv reading a skip concatenation, split per input: exact in fp32, closer in int8, and it lowers and runs."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from lgc.passes.quantization.analyze_sensitivity import QUANTIZABLE, layer_name
from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer
from lgc.passes.quantization.split_concat_conv import SplitConcatConv
from tests.passes.fusion.conftest import run_pass, state_of


class UpResnet(torch.nn.Module):
    """A decoder ResNet's input side: cat(upsampled, skip) -> GroupNorm path and a 1x1 conv_shortcut.

    As in a U-Net, the skip tensor is also read by the encoder's next layer, a user the lowering lays out
    long before it reaches the decoder's conv.
    """

    def __init__(self, skip_gain=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.enc_next = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.norm, self.conv1 = torch.nn.GroupNorm(4, 16), torch.nn.Conv2d(16, 8, 3, padding=1)
        self.conv_shortcut = torch.nn.Conv2d(16, 8, 1)
        self.skip_gain = skip_gain

    def forward(self, x, skip):
        s = self.enc(skip * self.skip_gain)
        deeper = self.enc_next(torch.nn.functional.silu(s))
        h = torch.cat([self.up(x) + deeper, s], dim=1)
        return self.conv1(torch.nn.functional.silu(self.norm(h))) + self.conv_shortcut(h)


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, 8, 8, generator=g)


def test_split_is_exact_and_leaves_the_other_users_of_the_cat_alone():
    res, before, after, err = run_pass(SplitConcatConv, UpResnet(), *inputs())
    assert res.changed and res.details["rewritten"] == {"unet": 1}  # conv_shortcut; conv1 reads the norm, not the cat
    assert after["aten.conv2d.default"] == before["aten.conv2d.default"] + 1
    assert after["aten.cat.default"] == 1  # still feeds the GroupNorm
    assert err < 1e-5


def test_parts_are_layers_of_their_own_for_ranking_and_fallback():
    state = state_of(UpResnet(), *inputs())
    SplitConcatConv().run(state, SplitConcatConv.Config())
    names = {layer_name(n) for n in state.model.components["unet"].graph.graph.nodes
             if n.op == "call_function" and n.target in QUANTIZABLE}
    assert {"conv_shortcut.input0", "conv_shortcut.input1"} <= names and "conv_shortcut" not in names


def _dynamic_int8(state, x):
    comp = state.model.components["unet"]
    gm = prepare_pt2e(comp.graph, xnnpack_quantizer(True, lambda n: True, False, dynamic=True))
    gm(*x)
    return convert_pt2e(gm)


def test_each_part_gets_its_own_int8_range():
    # The skip carries a 30x wider range than the upsampled features: one shared scale crushes the latter.
    x = inputs()
    module = UpResnet(skip_gain=30.0).eval()
    with torch.no_grad():
        ref = module(*x)
    shared = _dynamic_int8(state_of(module, *x), x)
    state = state_of(module, *x)
    SplitConcatConv().run(state, SplitConcatConv.Config())
    split = _dynamic_int8(state, x)
    with torch.no_grad():
        err_shared, err_split = ((m(*x) - ref).pow(2).mean().item() for m in (shared, split))
    assert err_split < 0.8 * err_shared, (err_split, err_shared)


def test_split_dynamic_program_lowers_to_one_delegate_and_runs():
    """Each part's dynamic quantize chain gets its own NHWC input; the other users of the part keep theirs.

    (This small graph lowers even with executorch's redirect-every-user behaviour; the reference U-Net
    does not, and tests/targets/test_android_bundles.py runs that one in the runtime.)
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from lgc.passes.fusion.decompose_group_norm import DecomposeGroupNorm
    from lgc.passes.quantization.unshare_dynamic_quantization import UnshareDynamicQuantization
    from lgc.targets.executorch.dynamic_conv_layout import fixed_dynamic_conv_layout
    from lgc.targets.executorch.emit import delegation_summary

    x = inputs()
    state = state_of(UpResnet(skip_gain=3.0), *x)
    comp = state.model.components["unet"]
    SplitConcatConv().run(state, SplitConcatConv.Config())
    comp.graph = _dynamic_int8(state, x)
    for cls in (UnshareDynamicQuantization, DecomposeGroupNorm):
        cls().run(state, cls.Config())
    with fixed_dynamic_conv_layout():
        edge = to_edge_transform_and_lower(torch.export.export(comp.graph, x), partitioner=[XnnpackPartitioner()])
    summary = delegation_summary(edge.exported_program().graph_module)
    assert summary["delegate_subgraphs"] == 1 and summary["nondelegated_compute_ops"] == 0, summary
    buffer = edge.to_executorch().buffer  # held: the loaded program reads from it
    got = Runtime.get().load_program(buffer).load_method("forward").execute(list(x))[0]
    with torch.no_grad():
        want, fp32 = comp.graph(*x), UpResnet(skip_gain=3.0).eval()(*x)
    scale = float(fp32.abs().max())
    # int8-close to both; a layout mix-up gives errors of the order of the output itself.
    # (XNNPACK picks its dynamic ranges at finer granularity than PT2E's per-tensor reference.)
    assert float((got - want).abs().max()) < 0.02 * scale
    assert float((got - fp32).abs().max()) < 0.03 * scale
