"""Per-layer quantization sensitivity: the error each conv/linear adds when it alone is int8."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.quantization.annotate_xnnpack_w8a8 import OPERATOR_GROUPS, module_paths
from lgc.runtime_harness.metrics import psnr_db

QUANTIZABLE = OPERATOR_GROUPS["conv"] | OPERATOR_GROUPS["linear"]


def layer_name(node: torch.fx.Node) -> str:
    """The innermost module path of ``node`` ("unet.up_blocks.1.resnets.0.conv1"), else the node name."""
    paths = module_paths(node)
    return ".".join(max(paths, key=len)) if paths else node.name


def layer_nodes(node: torch.fx.Node) -> set[str]:
    """Names a quantizer filter must accept (or reject) for one layer: the op and its own constants.

    XNNPACK's conv annotator also asks the filter about the weight and bias
    nodes; a filter that only knows the op leaves the conv silently fp32.
    """
    return {node.name} | {a.name for a in node.all_input_nodes if a.op == "get_attr"}


def macs(node: torch.fx.Node) -> int:
    """Multiply-accumulates of a conv/linear node, from the shapes torch.export recorded."""
    val = lambda a: a.meta.get("val") if isinstance(a, torch.fx.Node) else None  # noqa: E731
    x, w, out = val(node.args[0]), val(node.args[1]), node.meta.get("val")
    if x is None or w is None or out is None:
        return 0
    if node.target in OPERATOR_GROUPS["linear"]:
        return out.numel() * w.shape[1]
    if node.target == torch.ops.aten.conv_transpose2d.input:
        return x.numel() * math.prod(w.shape[1:])  # every input pixel scatters a (Cout/g, kh, kw) block
    return out.numel() * math.prod(w.shape[1:])


def output_psnr_db(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Output PSNR with the reference's own peak |value|: how far one quantized layer moves the component's output."""
    return psnr_db(got, ref, data_range=float(ref.abs().max()))


@register_pass
class AnalyzeSensitivity(Pass):
    """Rank every conv/linear layer by the error it adds to its component when it alone is quantized.

    Before/after: the graphs are not changed; the ranking goes into the pass
    report and the build report (``sensitivity``), and ``lgc build --explain``
    prints it. For each layer: a copy of the fp32 graph with only that layer
    annotated (XNNPACK W8A8, the settings of ``annotate_xnnpack_w8a8``),
    calibrated and converted on ``samples`` recorded inputs (timestep-
    stratified for the U-Net), then compared with the fp32 graph on the same
    inputs: PSNR of the component output (higher = less sensitive), and the
    layer's share of the component's multiply-accumulates.
    With ``enabled = False`` (the default) the pass does nothing.
    """

    name = "analyze_sensitivity"
    group = "quantization"

    @dataclass(frozen=True)
    class Config:
        enabled: bool = False  # run the analysis (lgc build --explain)
        components: tuple = ("unet",)  # graphs to analyse
        samples: int = 12  # recorded inputs per component used to calibrate and to measure
        per_channel: bool = True  # weight scales as annotate_xnnpack_w8a8 sets them

        def __post_init__(self):
            if self.samples < 1:
                raise ValueError("samples must be at least 1")

    def run(self, state, config: Config) -> PassResult:
        if not config.enabled:
            return PassResult(False, {"enabled": False})
        from lgc.calibration.collect import DEFAULT_PROMPTS, collect, read_prompts
        from lgc.passes.quantization.annotate_xnnpack_w8a8 import planned_config
        from lgc.passes.quantization.calibrate_observers import stratified

        dynamic = planned_config(state).dynamic_activations  # ranked in the activation mode the build quantizes with
        calib = collect(state.model, state.sampler.to_json(), read_prompts(DEFAULT_PROMPTS), [1000, 1001], state.cache_dir,
                        getattr(state, "progress_calibration", None))
        ranking = {}
        for name, comp in state.model.components.items():
            if name not in config.components or comp.graph is None:
                continue
            samples = calib.inputs.get(name, [])
            if name == "unet":
                samples = stratified(samples, state.sampler.num_steps, max(1, config.samples // state.sampler.num_steps + 1))
            step = max(1, len(samples) // config.samples)
            samples = samples[::step][: config.samples]
            ranking[name] = rank_layers(comp.graph, samples, config.per_channel, name in dynamic)
        return PassResult(False, {"enabled": True, "layers": ranking})


@torch.no_grad()
def rank_layers(gm: torch.fx.GraphModule, samples: list[tuple], per_channel: bool, dynamic: bool = False) -> list[dict]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer

    refs = [gm(*s) for s in samples]
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in QUANTIZABLE]
    total = sum(macs(n) for n in nodes) or 1
    rows = []
    for node in nodes:
        mine = layer_nodes(node)
        quantizer = xnnpack_quantizer(per_channel, lambda n, mine=mine: n.name in mine, dynamic=dynamic)
        trial = prepare_pt2e(copy.deepcopy(gm), quantizer)
        for s in samples:
            trial(*s)
        trial = convert_pt2e(trial)
        scores = [output_psnr_db(trial(*s), r) for s, r in zip(samples, refs)]
        rows.append({"layer": layer_name(node), "op": "linear" if node.target in OPERATOR_GROUPS["linear"] else "conv",
                     "psnr_db": round(min(scores), 2), "mac_share": round(macs(node) / total, 4)})
    return sorted(rows, key=lambda r: r["psnr_db"])
