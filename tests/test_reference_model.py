"""The committed reference pipeline is a real diffusers model, and its goldens match it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lgc.compiler.model_import import folder_sha256
from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir, stale_goldens

MODELS = ("student", "teacher")


def test_weights_are_small(reference_dir):
    total = sum(f.stat().st_size for m in MODELS for f in (reference_dir / m).rglob("*") if f.is_file())
    assert 1_000_000 < total < 30_000_000, total


@pytest.mark.parametrize("name", MODELS)
def test_stock_pipeline_loads_offline_and_generates(reference_dir, name):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(reference_dir / name, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    img = pipe("a photo of a tabby cat", num_inference_steps=8, generator=g, output_type="np").images[0]
    assert img.shape == (128, 128, 3) and np.isfinite(img).all()
    assert img.std() > 0.05  # an image, not a flat field


def test_goldens_are_not_stale(reference_dir):
    models = {f"reference-{m}": reference_dir / m for m in MODELS} | {"reference-student-50": reference_dir / "student"}
    assert stale_goldens(GOLDEN_ROOT, models) == []


def test_stale_goldens_are_detected(reference_dir, tmp_path):
    import shutil

    model = tmp_path / "student"
    shutil.copytree(reference_dir / "student", model)
    cfg = model / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "beta_end": 0.02}))
    assert folder_sha256(model) != folder_sha256(reference_dir / "student")
    stale = stale_goldens(GOLDEN_ROOT, {"reference-student": model, "reference-student-50": model,
                                        "reference-teacher": reference_dir / "teacher"})
    assert len(stale) == 2 and all(": model files changed" in s for s in stale)
    assert stale[0].startswith("reference-student") and stale[1].startswith("reference-student-50")


def test_regenerated_golden_matches_committed(reference_dir, tmp_path):
    """Regenerating one golden case reproduces the committed one within fp16 tolerance."""
    from lgc.compiler.golden import generate_goldens
    from lgc.runtime_harness.metrics import psnr_db

    committed = read_golden_dir(GOLDEN_ROOT / "reference-student")
    case = committed.cases[0]
    fresh = generate_goldens(reference_dir / "student", tmp_path / "g", "reference-student", prompts=[case.prompt], seeds=[case.seed])
    again = read_golden_dir(tmp_path / "g").cases[0]
    assert fresh["model"]["sha256"] == committed.manifest["model"]["sha256"]
    assert psnr_db(again.image, case.image, data_range=1.0) > 40
    assert torch.allclose(again.latents, case.latents, atol=2e-2)
