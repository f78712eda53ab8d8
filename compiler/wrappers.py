"""The call signature of each component, as an app calls it.

Each wrapper turns a diffusers/transformers module into a plain function of
tensors (no dicts, no config objects), folds in the constants an app would
otherwise have to know (latent scaling, image range), and is what
``torch.export`` captures.
"""

from __future__ import annotations

import torch


class TextEncoderStep(torch.nn.Module):
    """input_ids [1, L] int64 -> last_hidden_state [1, L, D]."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        # By name, not position: output [0] of a CLIP model with a projection head is the pooled embedding.
        return self.text_encoder(input_ids).last_hidden_state


class UNetStep(torch.nn.Module):
    """(sample, timestep [1] float, encoder_hidden_states[, timestep_cond]) -> noise_pred."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class VaeDecoderStep(torch.nn.Module):
    """Sampler latents [1, C, h, w] -> image [1, 3, H, W] in [0, 1].

    The 1/scaling_factor of the latents and the [-1, 1] -> [0, 1] mapping are
    inside the graph, so the app feeds the sampler's latents as they are.
    """

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor

    def forward(self, latents):
        image = self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


class VaeEncoderStep(torch.nn.Module):
    """Image [1, 3, H, W] in [0, 1] -> scaled latents (the posterior mean for AutoencoderKL)."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor

    def forward(self, image):
        out = self.vae.encode(image * 2 - 1, return_dict=False)[0]
        latents = out if isinstance(out, torch.Tensor) else out.mean
        return latents * self.scaling_factor
