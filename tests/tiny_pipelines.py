"""Tiny diffusers pipeline folders of the architectures lgc must import (random weights).

Each variant is the smallest config that still has the architectural feature
real distilled models use, so import/export tests run in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lgc.compiler.reference.data import build_tokenizer

BASE_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)
VARIANTS = {
    # SD-1.x: conv proj_in/proj_out, mid block with cross-attention, KL VAE.
    "sd1": dict(unet={}, vae="kl"),
    # SD-2.x: linear projections in attention, upcast attention, per-block head dims.
    "sd2": dict(unet=dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True), vae="kl"),
    # BK-SDM (small/base): block-removed, no mid block.
    "bksdm": dict(unet=dict(mid_block_type=None), vae="kl"),
    # BK-SDM tiny's stage layout: three stages, the last without attention, no mid block.
    "bksdm_tiny": dict(unet=dict(mid_block_type=None, block_out_channels=(16, 32, 32),
                                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")), vae="kl"),
    # LCM: guidance embedding input (time_cond_proj_dim), its own scheduler.
    "lcm": dict(unet=dict(time_cond_proj_dim=32), vae="tiny", scheduler=("LCMScheduler", {})),
    # SD-Turbo: SD-2.x U-Net, Euler ancestral at trailing timesteps.
    "sd_turbo": dict(unet=dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True), vae="kl",
                     scheduler=("EulerAncestralDiscreteScheduler", dict(timestep_spacing="trailing"))),
    # TAESD-style tiny decoder with an SD-1.x U-Net.
    "taesd": dict(unet={}, vae="tiny"),
    # A KL VAE with five stages: latents at 1/16 of the image.
    "kl_f16": dict(unet={}, vae="kl16"),
}

def make_tiny_pipeline(folder: Path, variant: str, unet_overrides: dict | None = None, seed: int = 0) -> Path:
    import diffusers
    from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    spec = VARIANTS[variant]
    tok = build_tokenizer(8)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=8,
                                      bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1))
    unet = UNet2DConditionModel(**{**BASE_UNET, **spec["unet"], **(unet_overrides or {})})
    if spec["vae"] in ("kl", "kl16"):
        stages = 5 if spec["vae"] == "kl16" else 4
        vae = AutoencoderKL(block_out_channels=(8,) * stages, down_block_types=("DownEncoderBlock2D",) * stages,
                            up_block_types=("UpDecoderBlock2D",) * stages, layers_per_block=1, latent_channels=4,
                            norm_num_groups=4, sample_size=64)
    else:
        vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                              num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    sched_cls, sched_kw = spec.get("scheduler", ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)))
    sched = getattr(diffusers, sched_cls)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                          **sched_kw)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
