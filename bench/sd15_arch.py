"""A Stable Diffusion 1.5-architecture pipeline folder with random weights, built from its published configs.

No machine here reaches a model hub, so the benchmarks cannot download
SD-1.5. What compile time, memory and latency depend on is the architecture
(859.5 M-parameter U-Net, CLIP ViT-L/14 text encoder, the 83.7 M-parameter
VAE), not the trained values, so this writes the same configs with seeded
random weights into a diffusers folder lgc imports like any other. The
tokenizer is lgc's reference tokenizer with SD's 77-token context: the ids
it produces are valid for SD's 49,408-token embedding table.

The folder is written once (about 4.3 GB) and reused while ``FORMAT`` and the
configs below are unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

FORMAT = 1  # bump when the configs or the way weights are drawn change

# runwayml/stable-diffusion-v1-5, unet/config.json
UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# vae/config.json
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
# text_encoder/config.json (CLIP ViT-L/14 text tower)
TEXT_ENCODER = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-05,
}
# scheduler/scheduler_config.json: DDIM over SD-1.5's noise schedule (the original ships PNDM with
# skip_prk_steps, which lgc lowers too); lgc samples whatever class the folder names, so the benchmarks'
# builds run DDIM. Speed per U-Net step does not depend on it.
SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_spacing": "leading",
}


def _seeded(seed: int, make):
    """``make()`` with its constructors' own initialisation (weights of a realistic scale) drawn from a fixed seed."""
    torch.manual_seed(seed)
    return make().eval()


def ensure_folder(root: Path, progress=print) -> Path:
    """The SD-1.5-architecture pipeline folder under ``root`` (written if missing or of another FORMAT)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(root) / f"sd15-arch-v{FORMAT}"
    if (folder / "model_index.json").exists():
        return folder
    progress(f"writing the SD-1.5-architecture pipeline (random weights) to {folder} (once, about 4.3 GB)")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.no_grad():
        _seeded(0, lambda: UNet2DConditionModel(**UNET)).save_pretrained(tmp / "unet")
        _seeded(1, lambda: AutoencoderKL(**VAE)).save_pretrained(tmp / "vae")
        _seeded(2, lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))).save_pretrained(tmp / "text_encoder")
    from lgc.compiler.build import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL / "tokenizer", tmp / "tokenizer")
    cfg_path = tmp / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = TEXT_ENCODER["max_position_embeddings"]
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
    }, indent=2) + "\n")
    tmp.replace(folder)
    return folder
