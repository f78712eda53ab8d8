from __future__ import annotations

from lgc.compiler.pass_manager import has_observers, op_histogram
from lgc.passes.quantization.annotate_xnnpack_w8a8 import AnnotateXnnpackW8A8


def test_observers_wrap_conv_and_linear(conv_state):
    gm_before = conv_state.model.components["unet"].graph
    assert not has_observers(gm_before)
    ops_before = op_histogram(gm_before)
    res = AnnotateXnnpackW8A8().run(conv_state, AnnotateXnnpackW8A8.Config(components=("unet",), dynamic_activations=()))
    gm = conv_state.model.components["unet"].graph
    assert res.changed and res.details["prepared"] == ["unet"]
    # conv input/output (relu fused), linear input/output, weights: several observers, compute ops unchanged.
    assert res.details["observers"]["unet"] >= 4
    assert op_histogram(gm)["aten.conv2d.default"] == ops_before["aten.conv2d.default"] == 1


def test_components_option_limits_what_is_annotated(conv_state):
    res = AnnotateXnnpackW8A8().run(conv_state, AnnotateXnnpackW8A8.Config(components=("text_encoder",)))
    assert not res.changed and not has_observers(conv_state.model.components["unet"].graph)


def test_operator_groups_and_float_modules_are_respected():
    import torch

    from lgc.passes.quantization.annotate_xnnpack_w8a8 import in_module, make_filter
    from tests.passes.quantization.conftest import make_state

    state, _ = make_state()
    gm = state.model.components["unet"].graph
    conv = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    assert in_module(conv, "conv") and not in_module(conv, "lin") and not in_module(conv, "co")
    assert make_filter(("conv", "linear"), ())(conv)
    assert not make_filter(("linear",), ())(conv)
    assert not make_filter(("conv", "linear"), ("conv",))(conv)
    AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",), keep_float_modules=("conv",), dynamic_activations=()))
    # Only the linear is observed now: its input, output and weight.
    few = sum(1 for n in state.model.components["unet"].graph.graph.nodes if n.op == "call_module")
    full, _ = make_state()
    AnnotateXnnpackW8A8().run(full, AnnotateXnnpackW8A8.Config(components=("unet",), dynamic_activations=()))
    assert 0 < few < sum(1 for n in full.model.components["unet"].graph.graph.nodes if n.op == "call_module")


def test_unknown_operator_group_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="unknown operator group"):
        AnnotateXnnpackW8A8.Config(operators=("conv", "softmax"))


def test_dynamic_activations_are_quantized_from_their_own_range_at_run_time():
    """A dynamic component gets choose_qparams on its activations (no calibrated scale); a static one does not."""
    from types import SimpleNamespace

    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from lgc.compiler.model_import import Component

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.lin = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.lin(torch.nn.functional.silu(self.conv(x)).mean(dim=(2, 3)))

    def converted(dynamic: tuple, mode=None):
        x = torch.randn(1, 4, 8, 8)
        comp = Component("unet", Block(), (x,), ["x"], ["y"], "Block", graph=torch.export.export(Block(), (x,)).module())
        if mode:  # what search_mixed_precision's INC strategy sets when it picks the other activation mode
            comp.meta["activation_mode"] = mode
        state = SimpleNamespace(model=SimpleNamespace(components={"unet": comp}))
        AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",), keep_float_modules=(),
                                                                   dynamic_activations=dynamic))
        comp.graph(x)
        gm = convert_pt2e(comp.graph)
        return gm, x

    dyn, x = converted(("unet",))
    static, _ = converted(())
    chooses = lambda gm: sum("choose_qparams" in str(n.target) for n in gm.graph.nodes)  # noqa: E731
    assert chooses(dyn) == 2 and chooses(static) == 0  # conv and linear inputs
    # A component's own activation_mode overrides the option, either way.
    assert chooses(converted(("unet",), "static")[0]) == 0 and chooses(converted((), "dynamic")[0]) == 2
    # Numerically still the block: int8 weights and activations, within int8 rounding of fp32.
    ref = Block()(x)
    assert torch.allclose(dyn(x), ref, atol=0.05 * float(ref.abs().max()))


def test_dynamic_activations_reject_operators_without_a_dynamic_kernel():
    import pytest

    with pytest.raises(ValueError, match="dynamic activations exist for conv and linear only"):
        AnnotateXnnpackW8A8.Config(operators=("conv", "linear", "add"))
    AnnotateXnnpackW8A8.Config(operators=("conv", "linear", "add"), dynamic_activations=())


def test_cat_obeys_the_filter():
    """executorch 1.5.1's cat annotator ignores the filter; lgc's quantizer makes it obey (skip concatenations stay fp32)."""
    from types import SimpleNamespace

    import torch

    from lgc.compiler.model_import import Component

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.cat([self.a(x), x], dim=1))

    def observed_cat_inputs(operators, strict=True) -> bool:
        x = torch.randn(1, 4, 6, 6)
        comp = Component("unet", Skip(), (x,), ["x"], ["y"], "Skip", graph=torch.export.export(Skip(), (x,)).module())
        state = SimpleNamespace(model=SimpleNamespace(components={"unet": comp}))
        AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",), operators=operators, keep_float_modules=(),
                                                                   strict_filter=strict, dynamic_activations=()))
        cat = next(n for n in comp.graph.graph.nodes if n.target == torch.ops.aten.cat.default)
        skip = cat.args[0][1]  # the skip branch: the graph input itself, or an observer of it
        return skip.op == "call_module" and "activation_post_process" in str(skip.target)

    assert not observed_cat_inputs(("conv", "linear"))
    assert observed_cat_inputs(("conv", "linear", "cat"))
    assert observed_cat_inputs(("conv", "linear"), strict=False)  # executorch's own behaviour, the default
