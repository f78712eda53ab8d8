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
STRATEGIES = ("lgc", "inc")


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
    ``strategy="inc"`` hands the search to Intel Neural Compressor's
    autotune (``inc_autotune``), over fallback size x activation mode
    (dynamic, static) with the same end-to-end measure; lgc's own ordered
    search runs beside it on the same (shared) trials, and the details
    compare the two choices. A static choice is passed on to
    ``annotate_xnnpack_w8a8`` through ``meta["activation_mode"]``.
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
        # "lgc": the fallback sizes in order, in the build's activation mode. "inc": Intel Neural
        # Compressor's autotune over fallback size x activation mode (dynamic, static), evaluated by
        # the same end-to-end measure; lgc's own choice is reported beside it for comparison.
        strategy: str = "lgc"

        def __post_init__(self):
            if self.min_psnr_db < 0 or not 0 <= self.max_float_mac_share < 1 or min(self.prompts, self.ranking_samples) < 1 \
                    or self.min_fallback < 0:
                raise ValueError("needs min_psnr_db >= 0, 0 <= max_float_mac_share < 1, prompts and ranking_samples >= 1, "
                                 "min_fallback >= 0")
            if self.strategy not in STRATEGIES:
                raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")

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
        observe = {True: samples, False: stratified(calib.inputs[config.component], state.sampler.num_steps, 2)}
        cases = eager_reference(state.model, sampler, read_prompts(DEFAULT_PROMPTS)[: config.prompts], [config.seed], [])

        def int8_fraction(fallback: list[str]) -> float:
            floats = always_float | set(fallback)
            return 1 - sum(macs(n) for name, n in layers.items() if name in floats) / total

        def allowed(k: int) -> bool:
            return k <= len(ranking) and sum(macs(layers[r["layer"]]) for r in ranking[:k]) / total <= config.max_float_mac_share

        sizes = []
        for k in (k for k in FALLBACK_SIZES if k >= config.min_fallback):
            if not allowed(k):
                break
            sizes.append(k)

        def quantized(model, k: int, dyn: bool):
            keep = set().union(*(layer_nodes(layers[r["layer"]]) for r in ranking[:k]))
            return _quantized_trial(model, quant, lambda n: allow(n) and n.name not in keep, dyn, observe[dyn])

        measured = {}

        def trial(k: int, dyn: bool, model=None) -> dict:
            """End-to-end figures with the top ``k`` layers fp32 (memoised: the strategies share trials)."""
            if (k, dyn) not in measured:
                q = model if model is not None else quantized(gm, k, dyn)
                e2e = _end_to_end(state, config.component, q, cases)
                measured[k, dyn] = {"float_layers": k, "dynamic": dyn, **e2e,
                                    "int8_mac_fraction": round(int8_fraction([r["layer"] for r in ranking[:k]]), 4)}
            return measured[k, dyn]

        choices = {"lgc": _ordered_search(sizes, dynamic, trial, config.min_psnr_db)}
        if config.strategy == "inc":
            from lgc.passes.quantization.inc_autotune import autotune_fallback

            t_inc = time.perf_counter()
            inc = autotune_fallback(gm, sizes, [dynamic, not dynamic], quantized,
                                    lambda q: trial(q.lgc_point[0], q.lgc_point[1], q), config.min_psnr_db)
            chosen = inc["chosen"]
            # Nothing met the budget: INC returns no model, so its best trial is kept.
            choice = trial(chosen["float_layers"], chosen["dynamic"]) if chosen else \
                max(inc["trials"], key=lambda t: t["psnr_db_min"], default=None)
            choices["inc"] = {"choice": choice, "trials": inc["trials"], "seconds": round(time.perf_counter() - t_inc, 1)}
        picked = choices[config.strategy]["choice"]
        if picked is None:  # min_fallback beyond what the MAC limit allows: the largest allowed fallback
            k = max(k for k in FALLBACK_SIZES if allowed(k))
            picked = {"float_layers": k, "dynamic": dynamic, "psnr_db_min": None}
        fallback = [r["layer"] for r in ranking[: picked["float_layers"]]]
        later = [k for k in FALLBACK_SIZES if k > len(fallback) and allowed(k)]
        comp.meta["float_layers"] = sorted(set().union(*(layer_nodes(layers[name]) for name in fallback)))
        if picked["dynamic"] != dynamic:  # INC chose the other activation mode: annotate_xnnpack_w8a8 follows
            comp.meta["activation_mode"] = "dynamic" if picked["dynamic"] else "static"
        met = picked["psnr_db_min"] is not None and picked["psnr_db_min"] >= config.min_psnr_db
        return PassResult(bool(fallback) or picked["dynamic"] != dynamic, {
            "enabled": True, "budget_db": config.min_psnr_db, "component": config.component, "strategy": config.strategy,
            "fallback": fallback, "activations": "dynamic" if picked["dynamic"] else "static",
            "int8_mac_fraction": round(int8_fraction(fallback), 4),
            "met_on_search_cases": met, "next_fallback": later[0] if later else None,
            "search_cases": f"{len(cases.cases)} held-out calibration prompts, seed {config.seed}, simulated int8 {config.component}, fp32 elsewhere",
            "trials": choices[config.strategy]["trials"],
            "strategies": {name: {"float_layers": c["choice"]["float_layers"] if c["choice"] else None,
                                  "activations": ("dynamic" if c["choice"]["dynamic"] else "static") if c["choice"] else None,
                                  "psnr_db_min": c["choice"]["psnr_db_min"] if c["choice"] else None,
                                  "trials": len(c["trials"]), **({"seconds": c["seconds"]} if "seconds" in c else {})}
                           for name, c in choices.items()},
            "seconds": round(time.perf_counter() - t0, 1)})


def _ordered_search(sizes: list[int], dynamic: bool, trial, budget_db: float) -> dict:
    """lgc's strategy: the sizes in order, in the build's activation mode; the first that meets the budget, else the best."""
    trials, best = [], None
    for k in sizes:
        t = trial(k, dynamic)
        trials.append(t)
        if best is None or t["psnr_db_min"] > best["psnr_db_min"]:
            best = t
        if t["psnr_db_min"] >= budget_db:
            best = t
            break
    return {"choice": best, "trials": trials}


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


def _quantized_trial(gm, quant, allow, dynamic: bool, observe):
    """A copy of ``gm`` PT2E-quantized as the build would (ops ``allow`` rejects left fp32), observed on ``observe``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer

    trial = prepare_pt2e(copy.deepcopy(gm), xnnpack_quantizer(quant.per_channel, allow, quant.strict_filter, dynamic))
    with torch.no_grad():
        for args in observe:
            trial(*args)
    return convert_pt2e(trial)


@torch.no_grad()
def _end_to_end(state, name, module, cases) -> dict:
    """End-to-end PSNR of the pipeline with ``module`` as component ``name``, the rest fp32 eager."""
    from lgc.calibration.collect import guidance_plan
    from lgc.runtime_harness.harness import evaluate
    from lgc.runtime_harness.runners import EagerRunner

    model = state.model
    fns = {n: EagerRunner(c.module) for n, c in model.components.items()}
    fns[name] = EagerRunner(module)
    # The parts of a manifest the harness loop reads, as build_manifest writes them.
    loop = {"tokenizer": {"max_length": model.info["text_max_length"]}, "sampler": state.sampler.to_json(),
            "guidance": guidance_plan(model.info, state.sampler.guidance_scale)}
    e2e = evaluate(fns, loop, model.tokenizer, cases, repeats=1)["end_to_end"]
    return {k: e2e[k] for k in ("psnr_db_min", "psnr_db_mean", "ssim_min")}
