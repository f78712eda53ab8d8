from __future__ import annotations

import torch

from lgc.passes.fusion.decompose_group_norm import DecomposeGroupNorm
from tests.passes.fusion.conftest import delegation_before_after, run_pass


class NormConv(torch.nn.Module):
    def __init__(self, affine=True):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.GroupNorm(4, 16, affine=affine)
        if affine:
            torch.nn.init.normal_(self.norm.weight)
            torch.nn.init.normal_(self.norm.bias)
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.silu(self.norm(x)))


def test_rewrites_group_norm_exactly():
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    res, before, after, err = run_pass(DecomposeGroupNorm, NormConv(), x)
    assert res.changed and res.details["rewritten"] == {"unet": 1}
    assert before["aten.group_norm.default"] == 1 and after["aten.group_norm.default"] == 0
    assert after["aten.mean.dim"] == 2 and after["aten.rsqrt.default"] == 1
    # Group statistics by grouped 1x1 convs (the second adds eps as its bias), the affine by a depthwise
    # 1x1 conv: 3 besides the model's own conv. No reshape, and no arithmetic with a constant operand.
    assert after["aten.conv2d.default"] == 4 and after["aten.reshape.default"] == 0
    assert after["aten.mul.Tensor"] == 2 and after["aten.add.Tensor"] == 0 and after["aten.sub.Tensor"] == 1
    assert err < 1e-4


def test_two_pass_statistics_survive_a_large_mean():
    # E[x^2] - E[x]^2 would lose every digit of the variance here; centring first keeps them.
    x = torch.randn(1, 16, 8, 8) * 0.01 + 1000.0
    module = torch.nn.GroupNorm(4, 16).eval()
    res, _, _, err = run_pass(DecomposeGroupNorm, module, x)
    assert res.changed and err < 1e-2


def test_groups_of_one_channel_and_one_group():
    for groups in (1, 16):
        res, _, after, err = run_pass(DecomposeGroupNorm, torch.nn.GroupNorm(groups, 16).eval(), torch.randn(2, 16, 4, 4))
        assert res.changed and err < 1e-4, groups


def test_without_affine():
    x = torch.randn(1, 16, 4, 4)
    res, _, after, err = run_pass(DecomposeGroupNorm, NormConv(affine=False), x)
    assert res.changed and after["aten.mean.dim"] == 2 and err < 1e-4


def test_result_lowers_to_one_delegate():
    x = torch.randn(1, 16, 8, 8)
    before, after = delegation_before_after(DecomposeGroupNorm, NormConv(), x)
    assert before["nondelegated_ops"].get("aten_native_group_norm_default") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
    # Channels-last from input to output: XNNPACK transposes only the caller's NCHW input in and the output
    # back. The (1, C, 1, 1) mul/add form cost a run-time transpose per constant and two around eps.
    assert after["xnnpack_ops"]["StaticTranspose"] == 2, after["xnnpack_ops"]


def test_no_group_norm_no_change():
    res, before, after, _ = run_pass(DecomposeGroupNorm, torch.nn.Conv2d(4, 4, 1), torch.randn(1, 4, 4, 4))
    assert not res.changed and before == after


class SequenceNorm(torch.nn.Module):
    """The KL VAE mid-block attention's form: GroupNorm over a (B, C, H*W) sequence, then a linear over channels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.GroupNorm(4, 16, affine=True)
        torch.nn.init.normal_(self.norm.weight)
        torch.nn.init.normal_(self.norm.bias)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = x.view(b, c, h * w).transpose(1, 2)  # (B, HW, C), as diffusers' Attention holds it
        seq = self.norm(seq.transpose(1, 2)).transpose(1, 2)
        return self.proj(seq).transpose(1, 2).reshape(b, c, h, w) + x


def test_three_d_group_norm_is_rewritten_exactly():
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    res, before, after, err = run_pass(DecomposeGroupNorm, SequenceNorm(), x)
    assert res.changed and before["aten.group_norm.default"] == 1 and after["aten.group_norm.default"] == 0
    assert err < 1e-4


def test_three_d_group_norm_lowers_to_one_delegate():
    before, after = delegation_before_after(DecomposeGroupNorm, SequenceNorm(), torch.randn(1, 16, 8, 8))
    assert before["nondelegated_ops"].get("aten_native_group_norm_default") == 1
    assert after["delegate_subgraphs"] == 1 and after["nondelegated_compute_ops"] == 0, after
