"""Mixed precision to a budget, on a tiny SD-1.x pipeline (4 DDIM steps) so the search runs in seconds."""

from __future__ import annotations

import pytest
import torch

from lgc.passes.quantization.search_mixed_precision import SearchMixedPrecision


@pytest.fixture(scope="module")
def tiny_state(tiny_pipeline, tmp_path_factory):
    """A build state after import, export and the sampler: what the search pass sees in a build."""
    from lgc.compiler.build import BuildState, export_components
    from lgc.compiler.model_import import load_pipeline
    from lgc.passes.step_reduction.lower_sampler import LowerSampler
    from lgc.targets.profiles import get_profile

    cache = tmp_path_factory.mktemp("search-cache")

    def make():
        profile = get_profile("android-int8").with_overrides(steps=4, solver="ddim")
        model = load_pipeline(tiny_pipeline("sd1"), profile.components, None)
        export_components(model)
        state = BuildState(profile, model, cache_dir=cache)
        LowerSampler().run(state, LowerSampler.Config(solver="ddim", steps=4))
        return state

    return make


FAST = dict(prompts=2, ranking_samples=3)


def test_off_by_default():
    class State:
        class model:
            components = {}

    res = SearchMixedPrecision().run(State(), SearchMixedPrecision.Config())
    assert not res.changed and res.details == {"enabled": False}


def test_reachable_budget_keeps_everything_int8(tiny_state):
    state = tiny_state()
    res = SearchMixedPrecision().run(state, SearchMixedPrecision.Config(min_psnr_db=1.0, **FAST))
    d = res.details
    assert not res.changed and d["fallback"] == [] and d["met_on_search_cases"]
    assert [t["float_layers"] for t in d["trials"]] == [0] and d["trials"][0]["psnr_db_min"] > 1.0
    assert state.model.components["unet"].meta["float_layers"] == []


def test_unreachable_budget_falls_back_within_the_mac_limit_and_annotation_obeys(tiny_state):
    from lgc.passes.quantization.analyze_sensitivity import QUANTIZABLE, layer_name
    from lgc.passes.quantization.annotate_xnnpack_w8a8 import AnnotateXnnpackW8A8

    state = tiny_state()
    res = SearchMixedPrecision().run(state, SearchMixedPrecision.Config(min_psnr_db=200.0, max_float_mac_share=0.2, **FAST))
    d = res.details
    assert not d["met_on_search_cases"] and len(d["trials"]) >= 2
    assert all(t["int8_mac_fraction"] >= 0.8 - 1e-6 - (1 - d["trials"][0]["int8_mac_fraction"]) for t in d["trials"])
    # The kept fallback is the best trial, and more fp32 layers measured better than none.
    best = max(d["trials"], key=lambda t: t["psnr_db_min"])
    assert len(d["fallback"]) == best["float_layers"] > 0
    assert best["psnr_db_min"] > d["trials"][0]["psnr_db_min"]
    # annotate_xnnpack_w8a8 leaves exactly those layers without int8 weights.
    comp = state.model.components["unet"]
    AnnotateXnnpackW8A8().run(state, AnnotateXnnpackW8A8.Config(components=("unet",)))
    observed = {layer_name(n) for n in comp.graph.graph.nodes if n.op == "call_function" and n.target in QUANTIZABLE
                and any(a.op == "call_module" for a in n.all_input_nodes)}
    assert observed and not observed & set(d["fallback"])


def test_retry_starts_beyond_the_failed_size(tiny_state):
    state = tiny_state()
    res = SearchMixedPrecision().run(state, SearchMixedPrecision.Config(min_psnr_db=1.0, min_fallback=2, **FAST))
    d = res.details
    assert len(d["fallback"]) == 2 and [t["float_layers"] for t in d["trials"]] == [2] and d["next_fallback"] == 3


def test_build_retries_only_when_the_bundle_missed_the_budget():
    from lgc.compiler.build import _budget_retry

    report = lambda nxt: [{"pass": "search_mixed_precision", "details": {"enabled": True, "budget_db": 30.0, "next_fallback": nxt}}]  # noqa: E731
    assert _budget_retry(report(2), {"psnr_db_min": 29.1}) == 2
    assert _budget_retry(report(2), {"psnr_db_min": 30.5}) is None
    assert _budget_retry(report(None), {"psnr_db_min": 29.1}) is None
    assert _budget_retry([{"pass": "search_mixed_precision", "details": {"enabled": False}}], {"psnr_db_min": 1.0}) is None


def test_min_psnr_flag_reaches_the_pass_and_float_targets_refuse_it(tmp_path):
    from lgc.compiler.cli import main
    from lgc.compiler.pass_manager import resolve_pipeline
    from lgc.targets.profiles import get_profile

    profile = get_profile("android-int8").with_pass_options(["search_mixed_precision.min_psnr_db=30"])
    planned = {p.cls.name: p.config for p in resolve_pipeline(profile.pipeline(), profile.options())}
    assert planned["search_mixed_precision"].min_psnr_db == 30
    assert main(["build", "--target", "android-fp32", "--min-psnr", "30", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "android-fp32").exists()


def test_inc_strategy_runs_neural_compressor_autotune_beside_lgcs_own_search(tiny_state):
    from neural_compressor.torch.utils.utility import algos_mapping

    state = tiny_state()
    res = SearchMixedPrecision().run(state, SearchMixedPrecision.Config(min_psnr_db=1.0, strategy="inc", **FAST))
    d = res.details
    assert "lgc_xnnpack_w8a8" in algos_mapping  # lgc's quantization is registered as an INC algorithm
    assert d["strategy"] == "inc" and set(d["strategies"]) == {"lgc", "inc"}
    # INC's first point (no fallback, the build's dynamic activations) meets a 1 dB budget; it stops there.
    assert [(t["float_layers"], t["dynamic"]) for t in d["trials"]] == [(0, True)]
    assert d["fallback"] == [] and d["activations"] == "dynamic" and d["met_on_search_cases"]
    assert d["strategies"]["inc"]["psnr_db_min"] == d["strategies"]["lgc"]["psnr_db_min"] > 1.0


def test_inc_strategy_without_a_reachable_budget_keeps_its_best_trial(tiny_state):
    state = tiny_state()
    res = SearchMixedPrecision().run(state, SearchMixedPrecision.Config(min_psnr_db=200.0, max_float_mac_share=0.2,
                                                                        strategy="inc", **FAST))
    d = res.details
    points = {(t["float_layers"], t["dynamic"]) for t in d["trials"]}
    sizes = {t["float_layers"] for t in d["trials"]}
    assert points == {(k, dyn) for k in sizes for dyn in (True, False)}  # INC tried the whole space: sizes x modes
    best = max(d["trials"], key=lambda t: t["psnr_db_min"])
    assert not d["met_on_search_cases"] and d["strategies"]["inc"]["psnr_db_min"] == best["psnr_db_min"]
    assert len(d["fallback"]) == best["float_layers"] and d["activations"] == ("dynamic" if best["dynamic"] else "static")
    assert state.model.components["unet"].meta.get("activation_mode", "dynamic") == d["activations"]


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        SearchMixedPrecision.Config(strategy="random")
