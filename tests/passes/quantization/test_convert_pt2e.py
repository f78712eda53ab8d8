from __future__ import annotations

import torch

from lgc.compiler.pass_manager import has_observers, op_histogram
from lgc.passes.quantization.annotate_xnnpack_w8a8 import AnnotateXnnpackW8A8
from lgc.passes.quantization.convert_pt2e import ConvertPt2e
from lgc.runtime_harness.metrics import psnr_db


def test_convert_gives_qdq_graph_close_to_fp32():
    from tests.passes.quantization.conftest import make_state

    state, calib = make_state(32)
    comp = state.model.components["unet"]
    AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",), dynamic_activations=()))
    with torch.no_grad():
        for args in calib:
            comp.graph(*args)
    res = ConvertPt2e().run(state, ConvertPt2e.Config())
    assert res.changed and res.details["converted"] == ["unet"]
    gm = comp.graph
    ops = op_histogram(gm)
    assert not has_observers(gm)
    assert ops["quantized_decomposed.quantize_per_tensor.default"] >= 2
    assert ops["quantized_decomposed.dequantize_per_channel.default"] == 2  # conv and linear weights
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = comp.module(x), gm(x)
    assert psnr_db(got, want) > 25  # int8 of a 2-layer net: close, not identical
    assert not torch.equal(got, want)


def test_convert_without_observers_changes_nothing(conv_state):
    res = ConvertPt2e().run(conv_state, ConvertPt2e.Config())
    assert not res.changed
