from __future__ import annotations

import pytest
import torch

from lgc.passes.fusion.deconv_as_phase_convs import DeconvAsPhaseConvs
from tests.passes.fusion.conftest import run_pass
from tests.passes.fusion.test_deconv_as_gemm import Deconv


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (4, 2, 0), (2, 2, 0), (6, 3, 0), (8, 4, 2)])
def test_transposed_conv_becomes_one_conv_per_phase(kernel, stride, padding):
    x = torch.randn(2, 16, 5, 6)
    res, before, after, err = run_pass(DeconvAsPhaseConvs, Deconv(kernel=kernel, stride=stride, padding=padding), x, min_in_channels=1)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.conv_transpose2d.input"] == 1 and after["aten.conv_transpose2d.input"] == 0
    assert after["aten.conv2d.default"] == stride * stride
    assert err < 1e-5


def test_phase_convs_keep_the_layer_name():
    from tests.passes.fusion.conftest import state_of

    x = torch.randn(1, 16, 4, 4)
    state = state_of(Deconv(), x)
    DeconvAsPhaseConvs().run(state, DeconvAsPhaseConvs.Config(min_in_channels=1))
    convs = [n for n in state.model.components["unet"].graph.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 4
    assert all(list(n.meta["nn_module_stack"].values())[-1][0].endswith("conv") for n in convs)


@pytest.mark.parametrize("module,config", [
    (Deconv(kernel=3, padding=1), {"min_in_channels": 1}), (Deconv(stride=2, output_padding=1), {"min_in_channels": 1}),
    (Deconv(16, 16, groups=2), {"min_in_channels": 1}), (Deconv(kernel=3, stride=1), {"min_in_channels": 1}),
    (Deconv(), {}),  # 16 input channels: below the default min_in_channels (slower as phases)
], ids=["uneven phases", "output padding", "grouped", "stride 1", "narrow"])
def test_transposed_convs_it_should_not_rewrite_are_left_alone(module, config):
    res, before, after, err = run_pass(DeconvAsPhaseConvs, module, torch.randn(1, module.conv.in_channels, 5, 5), **config)
    assert not res.changed and before == after and err == 0


def test_int8_phase_convs_lower_to_xnnpack_convolutions():
    """Dynamically quantized like the U-Net's upsamplers: four int8 convolutions in one delegate, no deconvolution."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.runtime_harness.runners import ExecuTorchRunner
    from lgc.targets.executorch.dynamic_conv_layout import fixed_dynamic_conv_layout
    from lgc.targets.executorch.emit import delegation_summary
    from lgc.targets.executorch.xnnpack_graph import delegate_ops
    from tests.passes.fusion.conftest import state_of

    x = torch.randn(2, 32, 6, 6)
    module = Deconv(32, 32)
    state = state_of(module, x)
    DeconvAsPhaseConvs().run(state, DeconvAsPhaseConvs.Config(min_in_channels=1))
    gm = state.model.components["unet"].graph
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    gm = prepare_pt2e(gm, quantizer)
    gm(x)
    gm = convert_pt2e(gm)
    # Every phase conv is quantized (int8 weights behind a dequantize), not only the first to claim a shared bias.
    convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 4 and all("dequantize" in str(n.args[1].target) for n in convs)
    with fixed_dynamic_conv_layout():
        edge = to_edge_transform_and_lower(torch.export.export(gm, (x,)), partitioner=[XnnpackPartitioner()])
    summary = delegation_summary(edge.exported_program().graph_module)
    assert summary["delegate_subgraphs"] == 1 and summary["nondelegated_compute_ops"] == 0, summary
    buffer = edge.to_executorch().buffer
    ops = delegate_ops(buffer)
    assert ops.get("ConvTranspose2d", 0) == 0 and ops["Conv2d"] == 4, ops
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pte"
        path.write_bytes(buffer)
        got = ExecuTorchRunner(path)(x)
    with torch.no_grad():
        ref = module(x)
    assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item()
