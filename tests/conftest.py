"""Session fixtures: the reference model, tiny architecture variants, and bundles built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REPO / "compiler" / "reference"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Factory: ``tiny_pipeline("sd2")`` -> folder of that variant, made once per session."""
    from tests.tiny_pipelines import make_tiny_pipeline

    made = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{variant}"), variant)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """android-int8 and android-fp32 bundles of the reference model, built once (lowering is slow)."""
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("build")
    reports = {t: build(None, t, out, UI(quiet=True)) for t in ("android-int8", "android-fp32")}
    return {t: (out / t, reports[t]) for t in reports}


@pytest.fixture(scope="session")
def ios_bundles(tmp_path_factory):
    """ios-fp16, ios-w4 and ios-et bundles of the reference model (Core ML conversion takes seconds, not minutes)."""
    from lgc.compiler.build import build
    from lgc.compiler.ui import UI

    out = tmp_path_factory.mktemp("ios")
    reports = {t: build(None, t, out, UI(quiet=True)) for t in ("ios-fp16", "ios-w4", "ios-et")}
    return {t: (out / t, reports[t]) for t in reports}
