"""Quality against step count: what each step reduction costs, for the source model and for the built artifacts.

For every step count and schedule (the solver's default timesteps, and the
ones ``optimize_timesteps`` searches), the golden prompts are generated
with the fp32 source model and with the bundle's artifacts, and compared with
the 50-step golden images: the fp32 column is the cost of the steps alone,
the artifact column adds the compiler's own (quantization, lowering).
The golden prompts are held out: the search fits on calibration prompts.
"""

from __future__ import annotations

import statistics

import torch

from lgc.runtime_harness.harness import eager_batch, timestep_cond
from lgc.runtime_harness.loop import generate, tokenize
from lgc.runtime_harness.metrics import psnr_db, ssim

DEFAULT_STEP_COUNTS = (4, 6, 8, 10, 15, 20)


def _score(images: list[torch.Tensor], goldens) -> dict:
    p = [psnr_db(img, _ref(c), data_range=1.0) for img, c in zip(images, goldens.cases)]
    s = [ssim(img, _ref(c)) for img, c in zip(images, goldens.cases)]
    return {"psnr_db_mean": round(statistics.fmean(p), 2), "psnr_db_min": round(min(p), 2),
            "ssim_mean": round(statistics.fmean(s), 4), "ssim_min": round(min(s), 4)}


def _ref(case) -> torch.Tensor:
    return case.image.unsqueeze(0) if case.image.dim() == 3 else case.image


def _fp32_images(model, plan: dict, goldens) -> list[torch.Tensor]:
    images = eager_batch(model, plan, [c.prompt for c in goldens.cases], torch.cat([c.noise for c in goldens.cases]))
    return [img.unsqueeze(0) for img in images]


def _artifact_images(fns: dict, tokenizer, manifest: dict, plan: dict, goldens) -> list[torch.Tensor]:
    L = manifest["tokenizer"]["max_length"]
    cfg_batch = manifest["guidance"]["mode"] == "cfg_batch"
    tcond = timestep_cond(manifest)
    uncond = tokenize(tokenizer, "", L)
    return [generate(plan, fns["text_encoder"], fns["unet"], fns["vae_decoder"], tokenize(tokenizer, c.prompt, L), uncond, c.noise,
                     cfg_batch, timestep_cond=tcond).image for c in goldens.cases]


def quality_vs_steps(model, fns: dict, tokenizer, manifest: dict, goldens, step_counts=DEFAULT_STEP_COUNTS,
                     cache_dir=None, progress=None) -> dict:
    """Rows of (schedule, steps) -> fp32 and artifact PSNR/SSIM against ``goldens`` (the many-step reference)."""
    from lgc.passes.step_reduction.optimize_timesteps import OptimizeTimesteps, optimized_plan
    from lgc.passes.step_reduction.scheduler_lowering import relower, why_not_searchable

    sampler = manifest["sampler"]
    solver = sampler["solver"]
    schedules = ("default",) if why_not_searchable(sampler) else ("default", "optimized")
    rows = []
    for n in step_counts:
        for schedule in schedules:
            if progress:
                progress(f"quality vs steps: {solver} x{n}, {schedule} timesteps")
            plan = relower(sampler, steps=n)
            search = None
            if schedule == "optimized":
                search = optimized_plan(model, plan, OptimizeTimesteps.Config(schedule="optimized"), cache_dir)
                plan = search["plan"]
            plan_json = plan.to_json()
            rows.append({"schedule": schedule, "steps": n, "timesteps": [int(t) for t in plan.timesteps],
                         "fp32": _score(_fp32_images(model, plan_json, goldens), goldens),
                         "artifact": _score(_artifact_images(fns, tokenizer, manifest, plan_json, goldens), goldens),
                         **({"search_cache": search["cache"]} if search else {})})
    return {"reference": goldens.source, "reference_steps": goldens.manifest.get("steps"), "solver": solver,
            "cases": len(goldens.cases), "rows": rows}
