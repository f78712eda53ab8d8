"""Mixed precision to a quality budget: keep the fewest, most sensitive U-Net layers in fp32 until it holds."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.quantization.analyze_sensitivity import QUANTIZABLE, layer_name, layer_nodes, macs, rank_layers

# Fallback sizes tried, in order (layers kept in fp32, most sensitive first).
FALLBACK_SIZES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@register_pass
class SearchMixedPrecision(Pass):
    """Pick the U-Net layers that stay fp32 so that the end-to-end PSNR reaches ``min_psnr_db``.

    Before/after: the graphs are not changed; the chosen layers go into the
    component's ``meta["float_layers"]``, which ``annotate_xnnpack_w8a8``
    leaves unannotated. How: the layers are ranked by the error each adds
    alone in int8 (``analyze_sensitivity``'s measure, in the build's
    activation mode); then the top 0, 1, 2, 3, 4, 6, 8, ... are kept in fp32
    until the end-to-end PSNR min over ``prompts`` held-out calibration
    prompts (never the golden prompts) reaches the budget, the U-Net
    quantized as the build will quantize it (PT2E graph, simulated int8) and
    the text encoder and VAE in fp32, against the fp32 pipeline. Never more
    than ``max_float_mac_share`` of the U-Net's multiply-accumulates fall
    back; if no allowed size reaches the budget, the best one is kept and
    the report says so. The harness then measures the lowered bundle against
    the goldens, and the build report says whether the budget held there.
    With ``min_psnr_db = 0`` (the default) the pass does nothing.
    """

    name = "search_mixed_precision"
    group = "quantization"

    @dataclass(frozen=True)
    class Config:
        min_psnr_db: float = 0.0  # end-to-end PSNR budget in dB (lgc build --min-psnr); 0: off
        component: str = "unet"  # the graph whose conv/linear layers may fall back to fp32
        max_float_mac_share: float = 0.10  # at most this share of its MACs in fp32 (the rest stays int8)
        prompts: int = 6  # held-out calibration prompts the search generates images for
        seed: int = 7  # their initial-noise seed
        ranking_samples: int = 6  # recorded U-Net inputs each layer's sensitivity is measured on
        # Smallest fallback tried. lgc build raises it when the lowered bundle misses the budget
        # on the goldens although the search's own cases met it.
        min_fallback: int = 0

        def __post_init__(self):
            if self.min_psnr_db < 0 or not 0 <= self.max_float_mac_share < 1 or min(self.prompts, self.ranking_samples) < 1 \
                    or self.min_fallback < 0:
                raise ValueError("needs min_psnr_db >= 0, 0 <= max_float_mac_share < 1, prompts and ranking_samples >= 1, "
                                 "min_fallback >= 0")

    def run(self, state, config: Config) -> PassResult:
        comp = state.model.components.get(config.component)
        if config.min_psnr_db <= 0 or comp is None or comp.graph is None:
            return PassResult(False, {"enabled": False})
        from lgc.calibration.collect import DEFAULT_PROMPTS, collect, read_prompts
        from lgc.passes.quantization.annotate_xnnpack_w8a8 import make_filter, planned_config
        from lgc.passes.quantization.calibrate_observers import stratified
        from lgc.runtime_harness.harness import eager_reference

        t0 = time.perf_counter()
        quant = planned_config(state)
        dynamic = config.component in quant.dynamic_activations
        allow = make_filter(quant.operators, quant.keep_float_modules)
        gm = comp.graph
        layers = {layer_name(n): n for n in gm.graph.nodes if n.op == "call_function" and n.target in QUANTIZABLE}
        total = sum(macs(n) for n in layers.values()) or 1
        always_float = {name for name, n in layers.items() if not allow(n)}

        sampler = state.sampler.to_json()
        calib = collect(state.model, sampler, read_prompts(DEFAULT_PROMPTS), [1000, 1001], state.cache_dir,
                        getattr(state, "progress_calibration", None))
        recorded = stratified(calib.inputs.get(config.component, []), state.sampler.num_steps, 1)
        samples = recorded[:: max(1, len(recorded) // config.ranking_samples)][: config.ranking_samples]
        ranking = [r for r in _ranking(gm, samples, quant.per_channel, dynamic, calib.key, state.cache_dir)
                   if r["layer"] not in always_float]
        # Static activations need ranges from calibration data; dynamic ones only the weights' (one call).
        observe = samples if dynamic else stratified(calib.inputs[config.component], state.sampler.num_steps, 2)
        cases = eager_reference(state.model, sampler, read_prompts(DEFAULT_PROMPTS)[: config.prompts], [config.seed], [])

        def int8_fraction(fallback: list[str]) -> float:
            floats = always_float | set(fallback)
            return 1 - sum(macs(n) for name, n in layers.items() if name in floats) / total

        def allowed(k: int) -> bool:
            return k <= len(ranking) and sum(macs(layers[r["layer"]]) for r in ranking[:k]) / total <= config.max_float_mac_share

        trials, best = [], None
        for k in (k for k in FALLBACK_SIZES if k >= config.min_fallback):
            if not allowed(k):
                break
            fallback = [r["layer"] for r in ranking[:k]]
            keep = set().union(*(layer_nodes(layers[name]) for name in fallback))
            e2e = _simulated_end_to_end(state, config.component, gm, quant, allow, keep, dynamic, observe, cases)
            trials.append({"float_layers": k, **e2e, "int8_mac_fraction": round(int8_fraction(fallback), 4)})
            if best is None or e2e["psnr_db_min"] > best[1]["psnr_db_min"]:
                best = (fallback, e2e)
            if e2e["psnr_db_min"] >= config.min_psnr_db:
                best = (fallback, e2e)
                break
        if best is None:  # min_fallback beyond what the MAC limit allows: the largest allowed fallback
            k = max(k for k in FALLBACK_SIZES if allowed(k))
            best = ([r["layer"] for r in ranking[:k]], None)
        fallback, e2e = best
        later = [k for k in FALLBACK_SIZES if k > len(fallback) and allowed(k)]
        comp.meta["float_layers"] = sorted(set().union(*(layer_nodes(layers[name]) for name in fallback)))
        return PassResult(bool(fallback), {
            "enabled": True, "budget_db": config.min_psnr_db, "component": config.component,
            "fallback": fallback, "int8_mac_fraction": round(int8_fraction(fallback), 4),
            "met_on_search_cases": e2e is not None and e2e["psnr_db_min"] >= config.min_psnr_db,
            "next_fallback": later[0] if later else None,
            "search_cases": f"{len(cases.cases)} held-out calibration prompts, seed {config.seed}, simulated int8 {config.component}, fp32 elsewhere",
            "trials": trials, "seconds": round(time.perf_counter() - t0, 1)})


def _ranking(gm, samples, per_channel: bool, dynamic: bool, calib_key: str, cache_dir) -> list[dict]:
    """``rank_layers``, cached on disk under the graph and calibration digest (a retried build ranks again for nothing)."""
    import json
    from pathlib import Path

    from lgc.compiler.artifact_cache import graph_digest

    path = None
    if cache_dir is not None:
        key = graph_digest(gm, {"ranking": calib_key, "samples": len(samples), "per_channel": per_channel, "dynamic": dynamic})
        path = Path(cache_dir) / f"ranking-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
    rows = rank_layers(gm, samples, per_channel, dynamic)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(path)
    return rows


@torch.no_grad()
def _simulated_end_to_end(state, name, gm, quant, allow, keep, dynamic, observe, cases) -> dict:
    """End-to-end PSNR of the pipeline with ``name`` PT2E-quantized (``keep`` nodes left fp32), the rest fp32 eager."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.calibration.collect import guidance_embedding
    from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer
    from lgc.runtime_harness.harness import evaluate
    from lgc.runtime_harness.runners import EagerRunner

    quantizer = xnnpack_quantizer(quant.per_channel, lambda n: allow(n) and n.name not in keep, quant.strict_filter, dynamic)
    trial = prepare_pt2e(copy.deepcopy(gm), quantizer)
    for args in observe:
        trial(*args)
    model = state.model
    fns = {n: EagerRunner(c.module) for n, c in model.components.items()}
    fns[name] = EagerRunner(convert_pt2e(trial))
    tcond = guidance_embedding(state.sampler.guidance_scale, model.info["guidance_embedding_dim"])
    loop = {"tokenizer": {"max_length": model.info["text_max_length"]}, "sampler": state.sampler.to_json(),
            "guidance": {"mode": "cfg_batch" if model.info["cfg_batch"] else ("embedding" if tcond is not None else "none"),
                         "timestep_cond": tcond[0].tolist() if tcond is not None else None}}
    e2e = evaluate(fns, loop, model.tokenizer, cases, repeats=1)["end_to_end"]
    return {k: e2e[k] for k in ("psnr_db_min", "psnr_db_mean", "ssim_min")}
