"""Run a bundle end to end from its manifest alone, and measure it against the golden outputs.

Component figures feed each artifact the goldens' own inputs (so one
component's error does not hide another's); end-to-end figures run the
whole loop, text to image, with nothing but the artifacts and the manifest.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from lgc.calibration.collect import guidance_embedding
from lgc.runtime_harness.golden import GoldenCase, GoldenSet
from lgc.runtime_harness.loop import generate, tokenize
from lgc.runtime_harness.metrics import psnr_db, ssim
from lgc.runtime_harness.runners import EagerRunner, median_latency_ms, open_runner
from lgc.runtime_harness.yardstick import YARDSTICK_VERSION, yardstick_ms


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def timestep_cond(manifest: dict):
    tc = manifest["guidance"].get("timestep_cond")
    return torch.tensor([tc], dtype=torch.float32) if tc else None


def _component_checks(name: str, fn, manifest: dict, goldens: GoldenSet, ids: dict, tcond) -> tuple[list[float], tuple]:
    """PSNR of one component on every golden case, and the inputs used to time it."""
    scores, example = [], None
    for case in goldens.cases:
        if name == "text_encoder":
            ref = case.prompt_embeds
            got = torch.cat([fn(ids[""]), fn(ids[case.prompt])]) if ref.shape[0] == 2 else fn(ids[case.prompt])
            example = (ids[case.prompt],)
            scores.append(psnr_db(got, ref))
        elif name == "unet":
            for sample, t, ref in case.unet.values():
                inp = (sample, t, case.prompt_embeds) + ((tcond.expand(sample.shape[0], -1),) if tcond is not None else ())
                example = inp
                scores.append(psnr_db(fn(*inp), ref))
        elif name == "vae_decoder":
            example = (case.latents,)
            scores.append(psnr_db(fn(case.latents), case.image.unsqueeze(0) if case.image.dim() == 3 else case.image, data_range=1.0))
    return scores, example


def evaluate(fns: dict, manifest: dict, tokenizer, goldens: GoldenSet, repeats: int = 5, progress=None,
             keep_images: bool = False) -> dict:
    """Figures for one set of component callables (artifacts or eager modules) against ``goldens``.

    Every latency also comes as ``latency_ratio``: its ratio to the yardstick
    workload timed in the same run, the figure that compares across machines.
    With ``keep_images``, the result also holds each case's image and the
    golden one (numpy HWC in [0, 1]) under ``images``, for the HTML report.
    """
    stick = yardstick_ms()
    L = manifest["tokenizer"]["max_length"]
    cfg_batch = manifest["guidance"]["mode"] == "cfg_batch"
    tcond = timestep_cond(manifest)
    prompts = {"", *(c.prompt for c in goldens.cases)}
    ids = {p: tokenize(tokenizer, p, L) for p in prompts}
    components = {}
    for name, fn in fns.items():
        if progress:
            progress(f"checking {name}")
        scores, example = _component_checks(name, fn, manifest, goldens, ids, tcond)
        ms = median_latency_ms(fn, example, repeats=repeats) if example else None
        components[name] = {
            "psnr_db_min": round(min(scores), 2) if scores else None,
            "psnr_db_mean": round(statistics.fmean(scores), 2) if scores else None,
            "latency_ms_median": round(ms, 3) if ms is not None else None,
            "latency_ratio": round(ms / stick, 4) if ms is not None else None,
        }
    e2e = {"psnr": [], "ssim": [], "ms": []}
    images = []
    for k, case in enumerate(goldens.cases):
        if progress:
            progress(f"end to end {k + 1}/{len(goldens.cases)}")
        t0 = time.perf_counter()
        res = generate(manifest["sampler"], fns["text_encoder"], fns["unet"], fns["vae_decoder"], ids[case.prompt], ids[""],
                       case.noise, cfg_batch, timestep_cond=tcond)
        e2e["ms"].append((time.perf_counter() - t0) * 1000)
        ref = case.image.unsqueeze(0) if case.image.dim() == 3 else case.image
        e2e["psnr"].append(psnr_db(res.image, ref, data_range=1.0))
        e2e["ssim"].append(ssim(res.image, ref))
        if keep_images:
            images.append({"prompt": case.prompt, "seed": case.seed, "psnr_db": e2e["psnr"][-1],
                           "artifact": _hwc(res.image), "golden": _hwc(ref)})
    end_to_end = {
        "psnr_db_min": round(min(e2e["psnr"]), 2),
        "psnr_db_mean": round(statistics.fmean(e2e["psnr"]), 2),
        "ssim_min": round(min(e2e["ssim"]), 4),
        "ssim_mean": round(statistics.fmean(e2e["ssim"]), 4),
        "latency_ms_median": round(statistics.median(e2e["ms"]), 1),
        "latency_ratio": round(statistics.median(e2e["ms"]) / stick, 3),
        "cases": len(goldens.cases),
    }
    out = {"end_to_end": end_to_end, "components": components, "per_case_psnr_db": [round(p, 2) for p in e2e["psnr"]],
           "yardstick": {"version": YARDSTICK_VERSION, "latency_ms_median": round(stick, 3)}}
    if keep_images:
        out["images"] = images
    return out


def _hwc(image: torch.Tensor):
    return image.reshape(image.shape[-3:]).permute(1, 2, 0).clamp(0, 1).numpy()


def open_bundle(bundle: Path, manifest: dict, artifacts: Path | None = None) -> tuple[dict, object]:
    """Every artifact of ``bundle`` loaded in its runtime, as callables, and the bundle's tokenizer.

    ``artifacts``: a folder holding same-named artifacts to run instead (a
    verification twin, for bundles whose own code this machine cannot run).
    """
    bundle = Path(bundle)
    where = Path(artifacts) if artifacts else bundle
    fns = {name: open_runner(c["runtime"], where / c["file"], c) for name, c in manifest["components"].items()}
    return fns, load_tokenizer(bundle / manifest["tokenizer"]["folder"])


def run_bundle(bundle: Path, manifest: dict, goldens: GoldenSet, repeats: int = 5, progress=None, keep_images: bool = False,
               artifacts: Path | None = None) -> dict:
    """Load every artifact of ``bundle`` (or of its twin folder ``artifacts``) in its runtime and evaluate it."""
    fns, tokenizer = open_bundle(bundle, manifest, artifacts)
    return evaluate(fns, manifest, tokenizer, goldens, repeats=repeats, progress=progress, keep_images=keep_images)


@torch.no_grad()
def eager_batch(model, plan: dict, prompts: list[str], noise: torch.Tensor, decode: bool = True):
    """The fp32 source model's loop for every (prompt, noise row) at once: one batched call per step.

    Returns the images ([N, 3, H, W]) or, with ``decode=False``, the final latents.
    """
    info = model.info
    L = info["text_max_length"]
    comps = model.components
    ids = torch.cat([tokenize(model.tokenizer, p, L) for p in prompts])
    uncond = tokenize(model.tokenizer, "", L).expand(len(prompts), -1)
    tcond = guidance_embedding(plan["guidance_scale"], info["guidance_embedding_dim"])
    decoder = comps["vae_decoder"].module if decode else (lambda x: x)
    res = generate(plan, comps["text_encoder"].module, comps["unet"].module, decoder, ids, uncond, noise,
                   info["cfg_batch"], timestep_cond=tcond)
    return res.image


@torch.no_grad()
def eager_reference(model, sampler: dict, prompts: list[str], seeds: list[int], pins: list[int]) -> GoldenSet:
    """A reference from the source model's fp32 eager components, for models without committed goldens."""
    from lgc.calibration.collect import initial_noise

    info = model.info
    fns = {n: EagerRunner(c.module) for n, c in model.components.items()}
    L = info["text_max_length"]
    tcond = guidance_embedding(sampler["guidance_scale"], info["guidance_embedding_dim"])
    cases = []
    for prompt in prompts:
        for seed in seeds:
            noise = initial_noise(seed, info["latent_shape"])
            res = generate(sampler, fns["text_encoder"], fns["unet"], fns["vae_decoder"], tokenize(model.tokenizer, prompt, L),
                           tokenize(model.tokenizer, "", L), noise, info["cfg_batch"], timestep_cond=tcond, record_steps=tuple(pins))
            unet = {i: (inp[0], inp[1], out) for i, (inp, out) in res.unet_io.items()}
            cases.append(GoldenCase(prompt, seed, noise, res.image[0], res.latents, res.prompt_embeds, unet))
    return GoldenSet("eager", "eager-fp32 (no goldens recorded for this model)", {"steps": sampler["num_steps"]}, cases)
