"""Two builds of the same inputs give the same bytes: artifacts, manifest, tokenizer (timings aside)."""

from __future__ import annotations

import json

from lgc.compiler.bundle import sha256_file

# Files that record how long things took; everything else must be byte-identical.
TIMING_FILES = {"report.json", "passes.json"}
# A small calibration set: what must repeat is the calibration, not its size (the default
# set made these three builds 8 minutes of the test run).
SMALL_CALIBRATION = ["calibrate_observers.max_prompts=2", "calibrate_observers.seeds=[1000]"]


def _digests(folder):
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in TIMING_FILES}


def test_same_inputs_same_bytes(tmp_path, tiny_pipeline):
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    model = tiny_pipeline("sd1")
    # Separate output roots, so the second build also calibrates from scratch (no shared cache).
    a = build(model, "android-int8", tmp_path / "a", UI(quiet=True), settings=SMALL_CALIBRATION)
    b = build(model, "android-int8", tmp_path / "b", UI(quiet=True), settings=SMALL_CALIBRATION)
    da, db = _digests(tmp_path / "a" / "android-int8"), _digests(tmp_path / "b" / "android-int8")
    assert {"manifest.json", "unet.pte", "text_encoder.pte", "vae_decoder.pte"} <= set(da)
    assert da == db
    # And the harness measured the same images from them.
    assert a["end_to_end"]["psnr_db_min"] == b["end_to_end"]["psnr_db_min"]
    # A warm rebuild restores the observers and reuses every lowered artifact: the same bytes again.
    c = build(model, "android-int8", tmp_path / "a", UI(quiet=True), settings=SMALL_CALIBRATION)
    assert all(comp["lowering_cached"] for comp in c["components"].values())
    passes = json.loads((tmp_path / "a" / "android-int8" / "passes.json").read_text())["passes"]
    assert next(p for p in passes if p["pass"] == "calibrate_observers")["details"]["observers"] == {
        "text_encoder": "weights only", "unet": "weights only", "vae_decoder": "restored"}
    assert _digests(tmp_path / "a" / "android-int8") == da


def test_same_inputs_same_bytes_core_ml(tmp_path, tiny_pipeline):
    """Core ML packages too: coremltools names package items with random UUIDs, serialises metadata maps in
    arbitrary order and stamps the date; k-means palettization must not vary either."""
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    model = tiny_pipeline("sd1")
    for root in ("a", "b"):
        build(model, "ios-w4", tmp_path / root, UI(quiet=True))
    da, db = _digests(tmp_path / "a" / "ios-w4"), _digests(tmp_path / "b" / "ios-w4")
    assert "unet.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in da
    assert da == db
