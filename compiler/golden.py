"""``lgc golden``: the fp16 outputs of the source diffusers pipeline that every artifact is checked against.

The goldens are produced by the stock diffusers pipeline class (not by lgc's
own loop), in fp16, from pinned initial latents, so they are an independent
reference. Per case they hold the final image and latents, the prompt
embeddings, and the U-Net's inputs and output at a few pinned steps. The
manifest records the model files' sha256, so goldens that no longer match
the model are detected as stale.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from lgc.calibration.collect import initial_noise
from lgc.compiler.model_import import check_pipeline_folder, folder_sha256

GOLDEN_PROMPTS = [
    "a photo of an astronaut in a white space suit",
    "a cup of coffee on a saucer",
    "a photo of a tabby cat",
    "a rocket on the launch pad",
    "old coins on a gray background",
    "a black and white photo of a cameraman",
    "galaxies in the deep field of space",
    "a rainbow color wheel",
]
GOLDEN_SEEDS = [0, 1]
GOLDEN_STEPS = 20
GOLDEN_GUIDANCE = 5.0


def versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def pinned_steps(steps: int) -> list[int]:
    return sorted({0, steps // 2, steps - 1})


@torch.no_grad()
def generate_goldens(model_path: Path, out: Path, name: str, steps: int = GOLDEN_STEPS, guidance: float = GOLDEN_GUIDANCE,
                     prompts=None, seeds=None, progress=None) -> dict:
    from diffusers import StableDiffusionPipeline

    prompts = prompts or GOLDEN_PROMPTS
    seeds = seeds or GOLDEN_SEEDS
    model_path = Path(model_path)
    check_pipeline_folder(model_path)
    pipe = StableDiffusionPipeline.from_pretrained(model_path, torch_dtype=torch.float16, local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    # The folder's own scheduler, as a diffusers user samples it (and as lgc's lower_sampler does by default).
    pipe.set_progress_bar_config(disable=True)
    vae_factor = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size * vae_factor
    latent_shape = [pipe.unet.config.in_channels, size // vae_factor, size // vae_factor]
    pins = pinned_steps(steps)

    calls: list = []
    hook = pipe.unet.register_forward_hook(
        lambda _m, args, kwargs, out: calls.append((args[0].clone(), args[1], kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None), out[0].clone())),
        with_kwargs=True,
    )
    stage = out.parent / f".{out.name}.staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    cases = []
    runs = [(p, s) for p in prompts for s in seeds]
    for k, (prompt, seed) in enumerate(runs):
        if progress:
            progress(k, len(runs), prompt)
        calls.clear()
        final = {}
        noise = initial_noise(seed, latent_shape)

        def on_step(_pipe, i, _t, kw):
            final["latents"] = kw["latents"].clone()
            return kw

        res = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, latents=noise.half(), output_type="pt",
                   height=size, width=size, callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        arrays = {
            "noise": noise.numpy(),
            "image": res.images.float().numpy().astype(np.float16),
            "latents": final["latents"].numpy().astype(np.float16),
            "prompt_embeds": calls[0][2].numpy().astype(np.float16),
        }
        for i in pins:
            sample, t, _emb, eps = calls[i]
            arrays[f"unet_sample_{i}"] = sample.numpy().astype(np.float16)
            arrays[f"unet_timestep_{i}"] = np.array([float(t)], dtype=np.float32)
            arrays[f"unet_out_{i}"] = eps.numpy().astype(np.float16)
        fname = f"case-{k:02d}.npz"
        np.savez_compressed(stage / fname, **arrays)
        _save_png(res.images[0].float(), stage / f"case-{k:02d}.png")
        cases.append({"prompt": prompt, "seed": seed, "file": fname, "png": f"case-{k:02d}.png"})
    hook.remove()
    files = {str(f.relative_to(model_path)): _sha(f) for f in sorted(model_path.rglob("*")) if f.is_file()}
    manifest = {
        "name": name,
        "model": {"path": str(model_path.name), "sha256": folder_sha256(model_path), "files": files},
        "pipeline_class": "StableDiffusionPipeline",
        "dtype": "float16",
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")},
        "steps": steps,
        "timesteps": [float(t) for t in pipe.scheduler.timesteps],
        "guidance_scale": guidance,
        "image_size": size,
        "latent_shape": latent_shape,
        "pinned_steps": pins,
        "seeds": seeds,
        "prompts": prompts,
        "versions": versions(),
        "cases": cases,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return manifest


def _jsonable(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_png(img: torch.Tensor, path: Path) -> None:
    from lgc.runtime_harness.loop import to_pil

    to_pil(img).save(path, optimize=True)
