"""Calibration sets: the real inputs each component sees in the floating-point pipeline.

The fp32 pipeline runs the *shipped* sampler (the plan ``lower_sampler``
resolved) over prompts and seeds, and every component's inputs are
recorded, so the U-Net is calibrated on exactly the timesteps it will visit
(its activations at t=999 and t=1 differ widely). The set is deterministic
and cached on disk under a key of everything that determines it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lgc.runtime_harness.loop import generate, tokenize

CACHE_VERSION = 1
DEFAULT_PROMPTS = Path(__file__).with_name("prompts.txt")


@dataclass
class CalibrationSet:
    inputs: dict[str, list[tuple]]  # component -> list of input tuples
    key: str
    cached: bool = False


def read_prompts(path: Path) -> list[str]:
    from lgc.compiler.errors import UsageError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"calibration prompt file not found: {path}") from None
    except UnicodeDecodeError:
        raise UsageError(f"calibration prompt file is not UTF-8 text: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read calibration prompt file {path}: {e.strerror or e}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"calibration prompt file has no prompts: {path}")
    return prompts


def initial_noise(seed: int, latent_shape: list[int]) -> torch.Tensor:
    """The pinned initial latents of a seed (same generator as the goldens)."""
    return torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def cache_key(model_sha: str, sampler: dict, prompts: list[str], seeds: list[int], info: dict) -> str:
    blob = json.dumps(
        {"v": CACHE_VERSION, "model": model_sha, "sampler": sampler, "prompts": prompts, "seeds": seeds,
         "latent": info["latent_shape"], "cfg": info["cfg_batch"], "torch": torch.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def guidance_embedding(guidance_scale: float, dim: int | None) -> torch.Tensor | None:
    """LCM-style w-embedding of (guidance_scale - 1) for U-Nets with ``time_cond_proj_dim``."""
    if not dim:
        return None
    import math

    w = torch.tensor([guidance_scale - 1.0]) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def guidance_plan(info: dict, guidance_scale: float) -> dict:
    """How guidance is applied to the U-Net: the manifest's ``guidance`` block, which the harness follows.

    ``cfg_batch``: classifier-free guidance, the U-Net batch is [uncond, cond];
    ``embedding``: an LCM-style U-Net takes the guidance scale as an embedding
    (``timestep_cond``); ``none``: neither.
    """
    tcond = guidance_embedding(guidance_scale, info["guidance_embedding_dim"])
    return {"mode": "cfg_batch" if info["cfg_batch"] else ("embedding" if tcond is not None else "none"),
            "scale": guidance_scale,
            "timestep_cond": tcond[0].tolist() if tcond is not None else None}


@torch.no_grad()
def collect(model, sampler: dict, prompts: list[str], seeds: list[int], cache_dir: Path | None, progress=None) -> CalibrationSet:
    info = model.info
    key = cache_key(model.sha256, sampler, prompts, seeds, info)
    path = Path(cache_dir) / f"calibration-{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        return CalibrationSet(torch.load(path), key, cached=True)
    comps = {n: c.module for n, c in model.components.items()}
    rec: dict[str, list[tuple]] = {n: [] for n in comps}

    def recorder(name):
        def call(*args):
            rec[name].append(tuple(a.clone() for a in args))
            return comps[name](*args)
        return call

    fns = {n: recorder(n) for n in ("text_encoder", "unet", "vae_decoder") if n in comps}
    L = info["text_max_length"]
    uncond = tokenize(model.tokenizer, "", L)
    tcond = guidance_embedding(sampler["guidance_scale"], info["guidance_embedding_dim"])
    runs = [(p, s) for p in prompts for s in seeds]
    for k, (prompt, seed) in enumerate(runs):
        if progress:
            progress(k, len(runs), prompt)
        generate(sampler, fns["text_encoder"], fns["unet"], fns["vae_decoder"], tokenize(model.tokenizer, prompt, L), uncond,
                 initial_noise(seed, info["latent_shape"]), info["cfg_batch"], timestep_cond=tcond)
    if progress:
        progress(len(runs), len(runs), "done")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(rec, tmp)
        tmp.replace(path)
    return CalibrationSet(rec, key)
