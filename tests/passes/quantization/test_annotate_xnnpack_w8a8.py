from __future__ import annotations

from lgc.compiler.pass_manager import has_observers, op_histogram
from lgc.passes.quantization.annotate_xnnpack_w8a8 import AnnotateXnnpackW8A8


def test_observers_wrap_conv_and_linear(conv_state):
    gm_before = conv_state.model.components["unet"].graph
    assert not has_observers(gm_before)
    ops_before = op_histogram(gm_before)
    res = AnnotateXnnpackW8A8().run(conv_state, AnnotateXnnpackW8A8.Config(components=("unet",)))
    gm = conv_state.model.components["unet"].graph
    assert res.changed and res.details["prepared"] == ["unet"]
    # conv input/output (relu fused), linear input/output, weights: several observers, compute ops unchanged.
    assert res.details["observers"]["unet"] >= 4
    assert op_histogram(gm)["aten.conv2d.default"] == ops_before["aten.conv2d.default"] == 1


def test_components_option_limits_what_is_annotated(conv_state):
    res = AnnotateXnnpackW8A8().run(conv_state, AnnotateXnnpackW8A8.Config(components=("text_encoder",)))
    assert not res.changed and not has_observers(conv_state.model.components["unet"].graph)
