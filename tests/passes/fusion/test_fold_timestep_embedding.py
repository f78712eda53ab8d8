"""fold_timestep_embedding: the U-Net's timestep path leaves the per-step graph for a method of its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lgc.compiler.model_import import Component
from lgc.compiler.pass_manager import op_histogram
from lgc.compiler.wrappers import UNetStep
from lgc.passes.fusion.fold_timestep_embedding import FoldTimestepEmbedding
from tests.tiny_pipelines import BASE_UNET

aten = torch.ops.aten
NAMES = ["sample", "timestep", "encoder_hidden_states"]


def unet_state(**overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNetStep(UNet2DConditionModel(**{**BASE_UNET, **overrides})).eval()
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([500.0]), torch.randn(2, 6, 32))
    extra = ()
    if overrides.get("time_cond_proj_dim"):
        extra = (torch.randn(2, overrides["time_cond_proj_dim"]),)
    inputs = inputs + extra
    gm = torch.export.export(unet, inputs, strict=False).module()
    names = NAMES + (["timestep_cond"] if extra else [])
    comp = Component("unet", unet, inputs, names, ["noise_pred"], "UNet2DConditionModel", graph=gm)
    return SimpleNamespace(model=SimpleNamespace(components={"unet": comp})), comp, unet


def resnets(unet) -> int:
    return sum(1 for m in unet.modules() if type(m).__name__ == "ResnetBlock2D")


@pytest.fixture(scope="module")
def folded():
    state, comp, unet = unet_state()
    before = op_histogram(comp.graph)
    res = FoldTimestepEmbedding().run(state, FoldTimestepEmbedding.Config())
    return res, before, comp, unet


def test_per_step_graph_keeps_no_timestep_work(folded):
    res, before, comp, unet = folded
    after = op_histogram(comp.graph)
    assert res.changed
    assert comp.input_names == ["sample", "time_features", "encoder_hidden_states"]
    # The sinusoid and every linear of the time path (the MLP's two, one per ResNet block) moved out.
    for op in ("aten.sin.default", "aten.cos.default", "aten.exp.default"):
        assert before.get(op, 0) >= 1 and after.get(op, 0) == 0, op
    assert before["aten.linear.default"] - after["aten.linear.default"] == 2 + resnets(unet)
    moved = res.details["moved"]["unet"]
    assert moved["frontier"] == resnets(unet)
    # One (batch, channels, 1, 1) projection per ResNet block, flattened side by side.
    widths = [m.time_emb_proj.out_features for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert moved["features"] == 2 * sum(widths) == comp.example_inputs[1].shape[1]


@pytest.mark.parametrize("t", [999.0, 500.0, 1.0])
def test_two_methods_compute_the_unet(folded, t):
    _, _, comp, unet = folded
    method = comp.methods["time_features"]
    assert (method.feeds, method.replaces, method.input_names) == ("time_features", "timestep", ["timestep"])
    sample, _, text = comp.example_inputs
    sample = torch.randn(sample.shape, generator=torch.Generator().manual_seed(int(t)))
    ts = torch.tensor([t])
    with torch.no_grad():
        got = comp.graph(sample, method.graph(ts), text)
        want = unet(sample, ts, text)
    assert (got - want).abs().max().item() < 1e-5


def test_guidance_embedding_input_keeps_its_own_path():
    """LCM's timestep_cond is added to the time embedding: only the sinusoid depends on the timestep alone."""
    state, comp, unet = unet_state(time_cond_proj_dim=32)
    res = FoldTimestepEmbedding().run(state, FoldTimestepEmbedding.Config())
    assert res.changed and res.details["moved"]["unet"]["frontier"] >= 1
    sample, feats, text, cond = comp.example_inputs
    method = comp.methods["time_features"]
    for t in (900.0, 10.0):
        with torch.no_grad():
            got = comp.graph(sample, method.graph(torch.tensor([t])), text, cond)
            want = unet(sample, torch.tensor([t]), text, cond)
        assert (got - want).abs().max().item() < 1e-5


def test_a_graph_without_the_input_is_left_alone():
    class NoTime(torch.nn.Module):
        def forward(self, x):
            return x * 2

    x = torch.randn(2, 3)
    gm = torch.export.export(NoTime(), (x,)).module()
    comp = Component("unet", NoTime(), (x,), ["sample"], ["out"], "NoTime", graph=gm)
    state = SimpleNamespace(model=SimpleNamespace(components={"unet": comp}))
    res = FoldTimestepEmbedding().run(state, FoldTimestepEmbedding.Config())
    assert not res.changed and comp.methods == {}


def test_lowered_program_has_both_methods_and_runs_from_the_timestep(folded, tmp_path):
    """ExecuTorch: one .pte, methods forward and time_features; the runner feeds one from the other."""
    from lgc.compiler.manifest import component_entry
    from lgc.runtime_harness.runners import open_runner
    from lgc.targets.executorch.emit import emit

    _, _, comp, unet = folded
    art = emit(comp, tmp_path)
    assert art["methods"]["time_features"]["feeds"] == "time_features"
    assert art["methods"]["time_features"]["outputs"][0]["shape"] == list(comp.example_inputs[1].shape)
    entry = component_entry(comp, art, "0" * 64, 1, "executorch", "fp32", torch.zeros(2, 4, 8, 8))
    assert [i["name"] for i in entry["inputs"]] == ["sample", "time_features", "encoder_hidden_states"]
    run = open_runner("executorch", tmp_path / art["file"], entry)
    sample, _, text = comp.example_inputs
    for t in (700.0, 3.0):
        ts = torch.tensor([t])
        with torch.no_grad():
            want = unet(sample, ts, text)
        assert (run(sample, ts, text) - want).abs().max().item() < 1e-4
    assert len(run.rows) == 2  # one time_features call per distinct timestep


def test_capturing_again_restores_the_timestep_input():
    """A --min-psnr retry exports the eager U-Net again: it must get its own inputs back, not the folded ones."""
    from lgc.compiler.build import export_components

    state, comp, _ = unet_state()
    FoldTimestepEmbedding().run(state, FoldTimestepEmbedding.Config())
    assert comp.input_names[1] == "time_features"
    export_components(state.model)
    assert comp.input_names == NAMES and comp.methods == {} and comp.example_inputs[1].shape == (1,)
    assert FoldTimestepEmbedding().run(state, FoldTimestepEmbedding.Config()).changed
