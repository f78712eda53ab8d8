from __future__ import annotations

import torch
import torch.nn.functional as F

from lgc.passes.fusion.upsample_as_deconv import UpsampleAsDeconv
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class UpConv(torch.nn.Module):
    def __init__(self, factor=2.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.factor = factor

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


def test_nearest_upsample_becomes_exact_deconv():
    x = torch.randn(1, 8, 5, 7)
    res, before, after, err = run_pass(UpsampleAsDeconv, UpConv(), x)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.upsample_nearest2d.vec"] == 1 and after["aten.upsample_nearest2d.vec"] == 0
    assert after["aten.conv_transpose2d.input"] == 1
    assert err < 1e-5


def test_factor_three():
    res, _, after, err = run_pass(UpsampleAsDeconv, UpConv(3.0), torch.randn(1, 8, 4, 4))
    assert res.changed and after["aten.conv_transpose2d.input"] == 1 and err < 1e-5


def test_non_integer_factor_is_left_alone():
    res, before, after, err = run_pass(UpsampleAsDeconv, UpConv(1.5), torch.randn(1, 8, 4, 4))
    assert not res.changed and before == after and err == 0


def test_result_lowers_to_one_delegate():
    x = torch.randn(1, 8, 6, 6)
    before, after = delegation_before_after(UpsampleAsDeconv, UpConv(), x)
    assert before["nondelegated_ops"].get("aten_upsample_nearest2d_vec") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after


def test_high_resolution_outputs_stay_nearest():
    # 40 x 40 output pixels > the default 32 x 32: XNNPACK's depthwise deconvolution would be slower there.
    res, before, after, _ = run_pass(UpsampleAsDeconv, UpConv(), torch.randn(1, 8, 20, 20))
    assert not res.changed and before == after
    res, _, after, _ = run_pass(UpsampleAsDeconv, UpConv(), torch.randn(1, 8, 20, 20), max_output_pixels=40 * 40)
    assert res.changed and after["aten.conv_transpose2d.input"] == 1
