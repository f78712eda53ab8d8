"""The artifact cache: unchanged components are not lowered again, changed ones are, and nothing else."""

from __future__ import annotations

import json


def _cached(report):
    return {n: c["lowering_cached"] for n, c in report["components"].items()}


def _shas(folder):
    return {n: c["sha256"] for n, c in json.loads((folder / "manifest.json").read_text())["components"].items()}


def test_rebuild_reuses_exactly_the_unchanged_components(tmp_path, tiny_pipeline):
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    model = tiny_pipeline("sd1")
    out = tmp_path / "out"
    first = build(model, "ios-fp16", out, UI(quiet=True))
    assert _cached(first) == {"text_encoder": False, "unet": False, "vae_decoder": False}
    shas = _shas(out / "ios-fp16")
    # report.json says where the time and memory went, stage by stage.
    stages = [st["stage"] for st in first["stages"]]
    assert stages[0].startswith("importing") and stages[-1].startswith("running the bundle end to end")
    assert "pass fold_constants" in stages and "lowering unet (coreml, fp16)" in stages
    peaks = [st["peak_rss_mib"] for st in first["stages"]]
    assert peaks == sorted(peaks) and peaks[0] > 0 and all(st["seconds"] >= 0 for st in first["stages"])

    # Fewer steps change the sampler in the manifest, not a single graph: everything is reused, bit for bit.
    second = build(model, "ios-fp16", out, UI(quiet=True), overrides={"steps": 4})
    assert _cached(second) == {"text_encoder": True, "unet": True, "vae_decoder": True}
    assert "lowering unet: cached" in " ".join(st["stage"] for st in second["stages"])
    assert _shas(out / "ios-fp16") == shas
    assert json.loads((out / "ios-fp16" / "manifest.json").read_text())["sampler"]["num_steps"] == 4

    # An option that changes only the text encoder's graph (its causal mask stays) re-lowers only it.
    third = build(model, "ios-fp16", out, UI(quiet=True), settings=['unmask_attention.components=["unet", "vae_decoder"]'])
    assert _cached(third) == {"text_encoder": False, "unet": True, "vae_decoder": True}
    assert _shas(out / "ios-fp16")["text_encoder"] != shas["text_encoder"]


def test_key_follows_weights(tiny_pipeline):
    """Same graph code, one weight changed: another key (a cache keyed on code alone would ship stale weights)."""
    import torch

    from lgc.compiler.artifact_cache import component_key
    from lgc.compiler.build import export_components
    from lgc.compiler.model_import import load_pipeline
    from lgc.targets.profiles import get_profile

    profile = get_profile("ios-fp16")
    model = load_pipeline(tiny_pipeline("sd1"), profile.components, None)
    export_components(model)
    comp = model.components["vae_decoder"]
    before = component_key(comp, profile, "0")
    assert component_key(comp, profile, "0") == before
    with torch.no_grad():
        next(comp.graph.parameters()).add_(1e-3)
    assert component_key(comp, profile, "0") != before
    assert component_key(comp, get_profile("ios-w8"), "0") != component_key(comp, profile, "0")


def test_key_follows_the_emitter_code(tiny_pipeline, monkeypatch):
    """Same graph, same lgc version, edited emitter code (a development install): another key."""
    from lgc.compiler import artifact_cache
    from lgc.compiler.build import export_components
    from lgc.compiler.model_import import load_pipeline
    from lgc.targets.profiles import get_profile

    profile = get_profile("ios-fp16")
    model = load_pipeline(tiny_pipeline("sd1"), profile.components, None)
    export_components(model)
    comp = model.components["vae_decoder"]
    digest = artifact_cache.emitter_source_digest()
    assert len(digest) == 16 and digest == artifact_cache.emitter_source_digest()
    before = artifact_cache.component_key(comp, profile, "0")
    monkeypatch.setattr(artifact_cache, "emitter_source_digest", lambda: "0" * 16)
    assert artifact_cache.component_key(comp, profile, "0") != before
