from __future__ import annotations

import pytest
import torch

from lgc.passes.fusion.conv_as_gemm import ConvAsGemm, k_chunks
from tests.passes.fusion.conftest import delegation_before_after, run_pass, state_of

SMALL = dict(min_in_channels=1, min_out_channels=1, min_mflop=0)  # the thresholds are about speed; the rewrite is exact at any size


class Conv(torch.nn.Module):
    def __init__(self, cin=16, cout=8, kernel=3, padding=1, **conv):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(cin, cout, kernel, padding=padding, **conv)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("kernel,padding,max_k,linears", [(3, 1, 2880, 1), (3, 0, 2880, 1), (3, 1, 40, 4), ((3, 1), (1, 0), 2880, 1), (5, 2, 100, 4)])
def test_conv_becomes_im2col_and_gemms_with_the_same_output(kernel, padding, max_k, linears):
    x = torch.randn(2, 16, 7, 9)
    res, before, after, err = run_pass(ConvAsGemm, Conv(kernel=kernel, padding=padding), x, max_k=max_k, **SMALL)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.conv2d.default"] == 1 and after["aten.conv2d.default"] == 0
    # One GEMM per chunk of input channels, each reduction at most max_k long.
    assert after["aten.linear.default"] == linears and after["aten.add.Tensor"] == linears - 1
    assert err < 1e-5


def test_chunks_are_the_largest_divisor_that_fits():
    assert k_chunks(1280, 9, 2880) == 320
    assert k_chunks(640, 4, 2880) == 640
    assert k_chunks(320, 9, 2880) == 320
    assert k_chunks(16, 9, 40) == 4
    assert k_chunks(7, 9, 5) == 1


def test_each_gemm_keeps_the_convs_module_path():
    state = state_of(Conv(), torch.randn(1, 16, 4, 4))
    ConvAsGemm().run(state, ConvAsGemm.Config(max_k=40, **SMALL))
    linears = [n for n in state.model.components["unet"].graph.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == 4 and all(list(n.meta["nn_module_stack"].values())[-1][0].endswith("conv") for n in linears)


@pytest.mark.parametrize("module,config", [
    (Conv(stride=2), SMALL), (Conv(dilation=2, padding=2), SMALL), (Conv(16, 16, groups=2), SMALL), (Conv(kernel=1, padding=0), SMALL),
    (Conv(), {}),  # 16 input channels: below the default min_in_channels
    (Conv(128, 4), {}),  # 4 outputs (a U-Net's conv_out): below min_out_channels
    (Conv(128, 64), {}),  # 1 x 6 x 6 pixels: 5.3 MFLOP, below min_mflop (the reference U-Net's 4x4 and 8x8 convs)
], ids=["strided", "dilated", "grouped", "1x1", "narrow", "few outputs", "little work"])
def test_convs_it_should_not_rewrite_are_left_alone(module, config):
    res, before, after, err = run_pass(ConvAsGemm, module, torch.randn(1, module.conv.in_channels, 6, 6), **config)
    assert not res.changed and before == after and err == 0


def test_a_quantized_conv_is_left_alone():
    """After PT2E convert the weight comes from a dequantize node, not a constant: XNNPACK's int8 conv is the faster form."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.randn(1, 16, 6, 6)
    state = state_of(Conv(), x)
    comp = state.model.components["unet"]
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(comp.graph, quantizer)
    prepared(x)
    comp.graph = convert_pt2e(prepared)
    res = ConvAsGemm().run(state, ConvAsGemm.Config(**SMALL))
    assert not res.changed


def test_result_lowers_to_one_delegate_of_gemms():
    x = torch.randn(2, 128, 8, 8)
    before, after = delegation_before_after(ConvAsGemm, Conv(128, 64), x, **SMALL)
    assert before["xnnpack_ops"]["Conv2d"] == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
    assert after["xnnpack_ops"].get("Conv2d", 0) == 0 and after["xnnpack_ops"]["FullyConnected"] == 1, after["xnnpack_ops"]


@pytest.mark.parametrize("kernel,padding,slices,cats", [(3, 1, 6, 2), ((3, 1), (1, 0), 3, 1)])
def test_patches_take_column_then_row_shifts(kernel, padding, slices, cats):
    """kh + kw slices and two concatenations (one when an axis has a single tap: no full-range slice either)."""
    res, before, after, err = run_pass(ConvAsGemm, Conv(kernel=kernel, padding=padding), torch.randn(1, 16, 6, 6), **SMALL)
    assert after["aten.slice.Tensor"] == slices and after["aten.cat.default"] == cats and err < 1e-5


@pytest.mark.parametrize("option", [{"max_k": 0}, {"min_in_channels": -1}, {"min_out_channels": "64"}])
def test_bad_options_are_refused_before_any_work(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        ConvAsGemm.Config(**option)
