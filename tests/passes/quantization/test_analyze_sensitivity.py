from __future__ import annotations

from types import SimpleNamespace

import torch

from lgc.compiler.model_import import Component
from lgc.passes.quantization.analyze_sensitivity import AnalyzeSensitivity, macs, rank_layers


class OutlierNet(torch.nn.Module):
    """``late`` reads activations with one channel 1000x the others: int8 per-tensor activations crush the rest.

    Its output uses only the small channels, so quantizing its input loses nearly all of it.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.early = torch.nn.Linear(16, 16)
        self.late = torch.nn.Linear(16, 16)
        self.register_buffer("gain", torch.tensor([1000.0] + [1.0] * 15))
        with torch.no_grad():
            self.late.weight[:, 0] = 0.0  # the output depends only on the channels the outlier crushes

    def forward(self, x):
        return self.late(self.early(x) * self.gain)


def samples(n=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 16, generator=g),) for _ in range(n)]


def test_the_layer_behind_the_outlier_ranks_first():
    gm = torch.export.export(OutlierNet().eval(), samples()[0]).module()
    rows = rank_layers(gm, samples(), per_channel=True)
    assert [r["layer"].rsplit(".", 1)[-1] for r in rows] == ["late", "early"]
    assert rows[0]["psnr_db"] + 10 < rows[1]["psnr_db"]  # far more sensitive, not a rounding difference
    assert abs(sum(r["mac_share"] for r in rows) - 1.0) < 1e-3 and all(r["op"] == "linear" for r in rows)


def test_dynamic_activations_follow_a_range_that_changes_between_calls():
    """Inputs 1000x apart in scale (as U-Net activations across timesteps): one static scale fails the small ones."""
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)).eval()
    xs = [(torch.randn(4, 16, generator=g) * scale,) for scale in (0.01, 0.1, 1.0, 10.0)]
    gm = torch.export.export(net, xs[0]).module()
    static = min(r["psnr_db"] for r in rank_layers(gm, xs, per_channel=True))
    dynamic = min(r["psnr_db"] for r in rank_layers(gm, xs, per_channel=True, dynamic=True))
    assert dynamic > static + 10, (static, dynamic)


def test_macs_of_conv_and_linear():
    class ConvLin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.lin = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.lin(self.conv(x).mean((2, 3)))

    gm = torch.export.export(ConvLin(), (torch.randn(1, 4, 5, 5),)).module()
    found = {str(n.target): macs(n) for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)}
    assert found == {"aten.conv2d.default": 8 * 25 * 4 * 9, "aten.linear.default": 2 * 8}


def test_disabled_is_a_no_op():
    gm = torch.export.export(OutlierNet().eval(), samples()[0]).module()
    comp = Component("unet", OutlierNet(), samples()[0], ["x"], ["y"], "OutlierNet", graph=gm)
    state = SimpleNamespace(model=SimpleNamespace(components={"unet": comp}))
    before = [n.format_node() for n in gm.graph.nodes]
    res = AnalyzeSensitivity().run(state, AnalyzeSensitivity.Config())
    assert not res.changed and res.details == {"enabled": False}
    assert [n.format_node() for n in comp.graph.graph.nodes] == before


def test_explain_flag_reaches_the_pass():
    from lgc.compiler.pass_manager import resolve_pipeline
    from lgc.targets.profiles import get_profile

    profile = get_profile("android-int8").with_pass_options(["analyze_sensitivity.enabled=true"])
    planned = {p.cls.name: p.config for p in resolve_pipeline(profile.pipeline(), profile.options())}
    assert planned["analyze_sensitivity"].enabled
    assert "analyze_sensitivity" not in get_profile("android-fp32").pipeline()  # nothing to rank without int8


def test_every_conv_is_really_quantized():
    """A layer left unquantized by the per-layer filter would show 99 dB (no error) and rank as safe."""

    class ConvStack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2 = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.c2(torch.nn.functional.silu(self.c1(x)))

    x = [(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    rows = rank_layers(torch.export.export(ConvStack().eval(), x[0]).module(), x, per_channel=True)
    assert len(rows) == 2 and all(r["op"] == "conv" and r["psnr_db"] < 90 for r in rows), rows
