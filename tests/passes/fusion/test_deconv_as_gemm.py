from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lgc.passes.fusion.deconv_as_gemm import DeconvAsGemm, phase_taps
from tests.passes.fusion.conftest import delegation_before_after, run_pass

SMALL = dict(min_in_channels=1, min_out_channels=1, min_mflop=0)


class Deconv(torch.nn.Module):
    def __init__(self, cin=16, cout=8, kernel=4, stride=2, padding=1, **conv):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=padding, **conv)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (4, 2, 0), (2, 2, 0), (6, 3, 0), (4, 2, 2), (8, 4, 2)])
def test_phase_taps_reproduce_a_1d_transposed_conv_in_float64(kernel, stride, padding):
    torch.manual_seed(1)
    x, w = torch.randn(11, dtype=torch.float64), torch.randn(kernel, dtype=torch.float64)
    ref = F.conv_transpose1d(x.view(1, 1, -1), w.view(1, 1, -1), stride=stride, padding=padding).flatten()
    taps, offsets, indices = phase_taps(kernel, stride, padding)
    for o in range(len(ref)):
        q, r = divmod(o, stride)
        value = sum(x[i] * w[indices[r][t]] for t in range(taps) if 0 <= (i := q + offsets[r] + t) < len(x))
        assert abs(value - ref[o]) < 1e-12


def test_phase_taps_refuse_phases_of_different_sizes():
    assert phase_taps(3, 2, 1) is None  # one phase reads 2 inputs, the other 1


@pytest.mark.parametrize("kernel,stride,padding,max_k,linears", [(4, 2, 1, 2880, 1), (4, 2, 0, 2880, 1), (2, 2, 0, 2880, 1), (4, 2, 1, 32, 2), (6, 3, 0, 2880, 1)])
def test_transposed_conv_becomes_one_gemm_and_an_interleave(kernel, stride, padding, max_k, linears):
    x = torch.randn(2, 16, 5, 6)
    res, before, after, err = run_pass(DeconvAsGemm, Deconv(kernel=kernel, stride=stride, padding=padding), x, max_k=max_k, **SMALL)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.conv_transpose2d.input"] == 1 and after["aten.conv_transpose2d.input"] == 0
    assert after["aten.linear.default"] == linears
    assert err < 1e-5


@pytest.mark.parametrize("module,config", [
    (Deconv(kernel=3, padding=1), SMALL),  # phases of 2 and 1 taps
    (Deconv(stride=2, output_padding=1), SMALL), (Deconv(16, 16, groups=2), SMALL), (Deconv(kernel=3, stride=1), SMALL),
    (Deconv(), {}),  # 16 input channels: below the default min_in_channels
], ids=["uneven phases", "output padding", "grouped", "stride 1", "narrow"])
def test_transposed_convs_it_should_not_rewrite_are_left_alone(module, config):
    res, before, after, err = run_pass(DeconvAsGemm, module, torch.randn(1, module.conv.in_channels, 5, 5), **config)
    assert not res.changed and before == after and err == 0


def test_result_lowers_to_one_delegate_without_deconvolutions():
    x = torch.randn(2, 128, 8, 8)
    before, after = delegation_before_after(DeconvAsGemm, Deconv(128, 64), x, **SMALL)
    assert before["xnnpack_ops"]["ConvTranspose2d"] == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
    assert after["xnnpack_ops"].get("ConvTranspose2d", 0) == 0 and after["xnnpack_ops"]["FullyConnected"] == 1, after["xnnpack_ops"]
