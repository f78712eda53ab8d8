from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lgc.passes.fusion.upsample_conv_as_deconv import UpsampleConvAsDeconv, fused_kernel
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class UpConv(torch.nn.Module):
    def __init__(self, factor=2.0, kernel=3, padding=1, cin=8, cout=6, **conv):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(cin, cout, kernel, padding=padding, **conv)
        self.factor = factor

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


@pytest.mark.parametrize("factor,kernel,padding", [(2.0, 3, 1), (2.0, 3, 0), (3.0, 3, 1), (2.0, 1, 0), (2.0, (3, 1), (1, 0))])
def test_fused_kernel_equals_upsample_then_conv_in_float64(factor, kernel, padding):
    torch.manual_seed(1)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    conv = torch.nn.Conv2d(5, 4, kernel, padding=padding).double()
    ref = conv(F.interpolate(x, scale_factor=factor, mode="nearest"))
    k = int(factor)
    pad = [kk - 1 - p for kk, p in zip(conv.weight.shape[2:], conv.padding)]
    out = F.conv_transpose2d(x, fused_kernel(conv.weight, k), conv.bias, stride=k, padding=pad)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < 1e-12


def test_upsample_and_conv_become_one_transposed_conv():
    x = torch.randn(1, 8, 5, 7)
    res, before, after, err = run_pass(UpsampleConvAsDeconv, UpConv(), x)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.upsample_nearest2d.vec"] == 1 and before["aten.conv2d.default"] == 1
    assert after["aten.upsample_nearest2d.vec"] == 0 and after["aten.conv2d.default"] == 0
    assert after["aten.conv_transpose2d.input"] == 1
    assert err < 1e-5


def test_the_transposed_conv_keeps_the_convs_module_path():
    from tests.passes.fusion.conftest import state_of

    state = state_of(UpConv(), torch.randn(1, 8, 4, 4))
    UpsampleConvAsDeconv().run(state, UpsampleConvAsDeconv.Config())
    (node,) = [n for n in state.model.components["unet"].graph.graph.nodes if n.target == torch.ops.aten.conv_transpose2d.input]
    assert list(node.meta["nn_module_stack"].values())[-1][0].endswith("conv")


@pytest.mark.parametrize("module", [UpConv(stride=2), UpConv(dilation=2, padding=2), UpConv(cin=8, cout=8, groups=2), UpConv(1.5)],
                         ids=["strided", "dilated", "grouped", "non-integer factor"])
def test_convs_it_cannot_fuse_are_left_alone(module):
    res, before, after, err = run_pass(UpsampleConvAsDeconv, module, torch.randn(1, 8, 6, 6))
    assert not res.changed and before == after and err == 0


def test_an_upsample_with_another_user_is_left_alone():
    class Two(UpConv):
        def forward(self, x):
            u = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.conv(u) + u[:, :6]

    res, before, after, _ = run_pass(UpsampleConvAsDeconv, Two(), torch.randn(1, 8, 4, 4))
    assert not res.changed and before == after


def test_result_lowers_to_one_delegate_at_any_resolution():
    # 64 x 64 output pixels: above upsample_as_deconv's limit, so before this pass the upsample stayed outside.
    before, after = delegation_before_after(UpsampleConvAsDeconv, UpConv(), torch.randn(1, 8, 32, 32))
    assert before["nondelegated_ops"].get("aten_upsample_nearest2d_vec") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
    assert after["xnnpack_ops"]["ConvTranspose2d"] == 1 and after["xnnpack_ops"].get("Conv2d", 0) == 0, after["xnnpack_ops"]
