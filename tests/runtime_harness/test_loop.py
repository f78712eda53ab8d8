"""lgc's manifest-driven loop, run with the eager fp32 components, reproduces the stock diffusers pipeline's goldens."""

from __future__ import annotations

import pytest

from lgc.compiler.golden import GOLDEN_GUIDANCE, GOLDEN_STEPS
from lgc.compiler.model_import import load_pipeline
from lgc.passes.step_reduction.scheduler_lowering import lower_sampler
from lgc.runtime_harness.golden import GOLDEN_ROOT, read_golden_dir
from lgc.runtime_harness.harness import evaluate
from lgc.runtime_harness.runners import EagerRunner


@pytest.fixture(scope="module")
def student(reference_dir):
    return load_pipeline(reference_dir / "student", ("text_encoder", "unet", "vae_decoder"), None)


def test_eager_loop_matches_fp16_goldens(student):
    goldens = read_golden_dir(GOLDEN_ROOT / "reference-student")
    goldens.cases = goldens.cases[:4]
    # The folder's own scheduler, as the goldens' stock pipeline samples it.
    sampler = lower_sampler(student.scheduler_config, GOLDEN_STEPS, guidance_scale=GOLDEN_GUIDANCE)
    assert sampler["scheduler"]["class"] == goldens.manifest["scheduler"]
    assert sampler["timesteps"] == goldens.manifest["timesteps"]
    manifest = {"sampler": sampler, "guidance": {"mode": "cfg_batch", "scale": GOLDEN_GUIDANCE},
                "tokenizer": {"max_length": student.info["text_max_length"]}}
    fns = {n: EagerRunner(c.module) for n, c in student.components.items()}
    figures = evaluate(fns, manifest, student.tokenizer, goldens, repeats=1)
    # fp32 eager against the fp16 pipeline: only fp16 rounding separates them.
    assert figures["end_to_end"]["psnr_db_min"] >= 35, figures
    for name, c in figures["components"].items():
        assert c["psnr_db_min"] >= 35, (name, c)


def test_wrong_sampler_is_visible(student):
    """The check has teeth: a different step count gives a clearly lower score."""
    goldens = read_golden_dir(GOLDEN_ROOT / "reference-student")
    goldens.cases = goldens.cases[:2]
    sampler = lower_sampler(student.scheduler_config, 4, solver="ddim", guidance_scale=GOLDEN_GUIDANCE)
    manifest = {"sampler": sampler, "guidance": {"mode": "cfg_batch", "scale": GOLDEN_GUIDANCE},
                "tokenizer": {"max_length": student.info["text_max_length"]}}
    fns = {n: EagerRunner(c.module) for n, c in student.components.items()}
    e2e = evaluate(fns, manifest, student.tokenizer, goldens, repeats=1)["end_to_end"]
    assert e2e["psnr_db_min"] < 30, e2e
