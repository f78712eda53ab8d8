// The manifest's text-to-image loop, the one lgc's README documents and its harness runs:
//
//   x = noise * init_noise_sigma
//   for i, t in enumerate(timesteps):
//       e = unet(concat(x, x) * input_scale[i], t, [uncond_emb, cond_emb])    (cfg_batch)
//       out[i] = e_uncond + guidance_scale * (e_cond - e_uncond)
//       x = sum_k x_coef[i][k] * x[i-k] + sum_k eps_coef[i][k] * out[i-k]
//       if noise_coef: x += noise_coef[i] * standard_normal(x.shape)
//   image = vae_decoder(x)
//
// Every float32 operation is the one torch performs in lgc's Python loop, in the same order with the
// same roundings (constants rounded to float32 first, products and sums rounded one at a time), so an
// app's image equals the harness's for the same artifacts. Components are plain functions here; the
// ExecuTorch pipeline (pipeline.h) supplies them.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lgc/bundle.h"

namespace lgc {

using Floats = std::vector<float>;

struct LoopComponents {
  std::function<Floats(const std::vector<int64_t>& ids)> text_encoder;  // [1, L] -> [1, L, D]
  // sample [B, C, h, w], timestep, embeddings [B, L, D], timestep_cond [B, dim] (empty when unused)
  std::function<Floats(const Floats& sample, float timestep, const Floats& embeds, const Floats& timestep_cond)> unet;
  std::function<Floats(const Floats& latents)> vae_decoder;  // [1, C, h, w] -> [1, 3, H, W] in [0, 1]
};

struct LoopInputs {
  std::vector<int64_t> ids_cond, ids_uncond;
  Floats noise;                 // the initial latents, [1, C, h, w]
  bool cfg_batch = true;
  double guidance_scale = 1.0;  // cfg_batch only
  Floats timestep_cond;         // embedding mode: one row, repeated over the batch
  uint64_t noise_seed = 0;      // the generator of the steps' noise draws (ancestral, SDE, LCM)
  std::function<void(int step, int steps)> on_step;
};

struct LoopResult {
  Floats image;    // [1, 3, H, W]
  Floats latents;  // the decoder's input
};

LoopResult run_loop(const SamplerPlan& plan, const LoopComponents& c, const LoopInputs& in);

// The image as 8-bit RGB, row-major HWC: clamp to [0, 1], times 255, round half to even (lgc's to_pil).
std::vector<uint8_t> to_rgb8(const Floats& image_chw, int height, int width);

// The LCM-style guidance embedding of (scale - 1), as lgc's calibration.guidance_embedding computes it.
Floats guidance_embedding(double guidance_scale, size_t dim);

}  // namespace lgc
