"""The text-to-image loop driven only by the bundle's manifest: the same loop an app implements.

Components are plain callables (an ExecuTorch method, an eager module, ...),
so the harness, calibration and golden checks share this one loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Fn = Callable[..., torch.Tensor]


@dataclass
class LoopResult:
    image: torch.Tensor  # [1, 3, H, W] in [0, 1]
    latents: torch.Tensor  # final latents, the decoder's input
    prompt_embeds: torch.Tensor  # [2, L, D] (uncond, cond) or [1, L, D]
    unet_io: dict = field(default_factory=dict)  # step -> (inputs tuple, output)


def tokenize(tokenizer, prompt: str, max_length: int) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids.to(torch.long)


def guided(noise_pred: torch.Tensor, scale: float, cfg_batch: bool) -> torch.Tensor:
    if not cfg_batch:
        return noise_pred
    uncond, cond = noise_pred.chunk(2)
    return uncond + scale * (cond - uncond)


def generate(
    sampler: dict,
    text_encoder: Fn,
    unet: Fn,
    vae_decoder: Fn,
    ids_cond: torch.Tensor,
    ids_uncond: torch.Tensor,
    noise: torch.Tensor,
    cfg_batch: bool,
    timestep_cond: torch.Tensor | None = None,
    record_steps: tuple[int, ...] = (),
    on_unet: Callable | None = None,
    noise_seed: int = 0,
) -> LoopResult:
    """Run the manifest's sampler: x_{i+1} = sum a_k x_{i-k} + sum b_k out_{i-k} (+ noise_coef[i] z_i).

    ``out`` is the guided U-Net output as it comes (epsilon, v or sample: the coefficients account
    for it). The z_i (ancestral, SDE and LCM steps) are drawn in step order from a generator seeded
    with ``noise_seed``.
    """
    cond = text_encoder(ids_cond)
    embeds = torch.cat([text_encoder(ids_uncond), cond]) if cfg_batch else cond
    x_hist: list[torch.Tensor] = [noise * sampler["init_noise_sigma"]]
    eps_hist: list[torch.Tensor] = []
    unet_io = {}
    keep = max(len(c) for c in sampler["x_coef"] + sampler["eps_coef"])
    noise_coef = sampler.get("noise_coef") or [0.0] * len(sampler["timesteps"])
    gen = torch.Generator().manual_seed(noise_seed)
    for i, t in enumerate(sampler["timesteps"]):
        x = x_hist[0] * sampler["input_scale"][i]
        inp = (torch.cat([x, x]) if cfg_batch else x, torch.tensor([float(t)]), embeds)
        if timestep_cond is not None:
            inp = inp + (timestep_cond.expand(inp[0].shape[0], -1),)
        if on_unet is not None:
            on_unet(i, inp)
        out = unet(*inp)
        if i in record_steps:
            unet_io[i] = (inp, out)
        eps_hist.insert(0, guided(out, sampler["guidance_scale"], cfg_batch))
        a, b = sampler["x_coef"][i], sampler["eps_coef"][i]
        nxt = sum(c * xk for c, xk in zip(a, x_hist)) + sum(c * ek for c, ek in zip(b, eps_hist))
        if noise_coef[i]:
            nxt = nxt + noise_coef[i] * torch.randn(noise.shape, generator=gen, dtype=noise.dtype)
        x_hist.insert(0, nxt)
        del x_hist[keep:], eps_hist[keep:]
    latents = x_hist[0]
    return LoopResult(vae_decoder(latents), latents, embeds, unet_io)


def to_pil(image: torch.Tensor):
    """A loop image ([1, 3, H, W] or [3, H, W], in [0, 1]) as an RGB PIL image, 8 bits per channel."""
    from PIL import Image

    arr = (image.reshape(image.shape[-3:]).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")
