#include "lgc/sampler.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "lgc/error.h"
#include "lgc/torch_randn.h"

namespace lgc {

LoopResult run_loop(const SamplerPlan& plan, const LoopComponents& c, const LoopInputs& in) {
  const size_t n = in.noise.size();
  const Floats cond = c.text_encoder(in.ids_cond);
  Floats embeds = cond;
  if (in.cfg_batch) {  // the U-Net batch is [uncond, cond]
    embeds = c.text_encoder(in.ids_uncond);
    embeds.insert(embeds.end(), cond.begin(), cond.end());
  }
  const size_t batch = in.cfg_batch ? 2 : 1;
  Floats tcond;
  for (size_t b = 0; b < batch && !in.timestep_cond.empty(); ++b) tcond.insert(tcond.end(), in.timestep_cond.begin(), in.timestep_cond.end());

  size_t keep = 0;
  for (const auto& row : plan.x_coef) keep = std::max(keep, row.size());
  for (const auto& row : plan.eps_coef) keep = std::max(keep, row.size());
  std::deque<Floats> x_hist, out_hist;  // newest first
  Floats x0(n);
  const float sigma = static_cast<float>(plan.init_noise_sigma);
  for (size_t j = 0; j < n; ++j) x0[j] = in.noise[j] * sigma;
  x_hist.push_front(std::move(x0));

  TorchGenerator gen(in.noise_seed);
  Floats z(n);
  const int steps = static_cast<int>(plan.timesteps.size());
  for (int i = 0; i < steps; ++i) {
    const float scale = static_cast<float>(plan.input_scale[i]);
    Floats sample(batch * n);
    for (size_t b = 0; b < batch; ++b)
      for (size_t j = 0; j < n; ++j) sample[b * n + j] = x_hist[0][j] * scale;
    if (in.on_step) in.on_step(i, steps);
    const Floats e = c.unet(sample, static_cast<float>(plan.timesteps[i]), embeds, tcond);
    if (e.size() != batch * n) throw Error(kRuntime, "the U-Net's output has " + std::to_string(e.size()) + " values, not " + std::to_string(batch * n));
    Floats out(e.begin(), e.begin() + static_cast<std::ptrdiff_t>(n));
    if (in.cfg_batch) {  // uncond + scale * (cond - uncond), each operation rounded
      const float g = static_cast<float>(in.guidance_scale);
      for (size_t j = 0; j < n; ++j) {
        const float diff = e[n + j] - e[j];
        const float scaled = g * diff;
        out[j] = e[j] + scaled;
      }
    }
    out_hist.push_front(std::move(out));
    // sum_k a_k x_{i-k}, then sum_k b_k out_{i-k}, then their sum: Python's sum() order, one rounding each.
    Floats xs(n, 0.0f), es(n, 0.0f);
    const auto& a = plan.x_coef[i];
    const auto& bcoef = plan.eps_coef[i];
    for (size_t k = 0; k < a.size() && k < x_hist.size(); ++k) {
      const float ak = static_cast<float>(a[k]);
      for (size_t j = 0; j < n; ++j) {
        const float term = ak * x_hist[k][j];
        xs[j] = xs[j] + term;
      }
    }
    for (size_t k = 0; k < bcoef.size() && k < out_hist.size(); ++k) {
      const float bk = static_cast<float>(bcoef[k]);
      for (size_t j = 0; j < n; ++j) {
        const float term = bk * out_hist[k][j];
        es[j] = es[j] + term;
      }
    }
    Floats next(n);
    for (size_t j = 0; j < n; ++j) next[j] = xs[j] + es[j];
    if (!plan.noise_coef.empty() && plan.noise_coef[i] != 0.0) {
      gen.randn(z.data(), n);
      const float nc = static_cast<float>(plan.noise_coef[i]);
      for (size_t j = 0; j < n; ++j) {
        const float term = nc * z[j];
        next[j] = next[j] + term;
      }
    }
    x_hist.push_front(std::move(next));
    while (x_hist.size() > keep) x_hist.pop_back();
    while (out_hist.size() > keep) out_hist.pop_back();
  }
  LoopResult r;
  r.latents = x_hist[0];
  r.image = c.vae_decoder(r.latents);
  return r;
}

std::vector<uint8_t> to_rgb8(const Floats& image, int height, int width) {
  const size_t plane = static_cast<size_t>(height) * static_cast<size_t>(width);
  if (image.size() != 3 * plane) throw Error(kRuntime, "the decoder's image is not 3 x " + std::to_string(height) + " x " + std::to_string(width));
  std::vector<uint8_t> rgb(3 * plane);
  for (size_t p = 0; p < plane; ++p)
    for (size_t ch = 0; ch < 3; ++ch) {
      const float v = std::min(std::max(image[ch * plane + p], 0.0f), 1.0f) * 255.0f;
      rgb[p * 3 + ch] = static_cast<uint8_t>(std::nearbyint(v));  // round half to even, as torch.round
    }
  return rgb;
}

Floats guidance_embedding(double guidance_scale, size_t dim) {
  // w = (scale - 1) * 1000 in float32; freqs = exp(arange(half) * -(ln 10000 / (half - 1))); [sin(w f), cos(w f)]
  const float w = static_cast<float>(guidance_scale - 1.0) * 1000.0f;
  const size_t half = dim / 2;
  const float step = static_cast<float>(-(std::log(10000.0) / static_cast<double>(half - 1)));
  Floats emb(dim, 0.0f);
  for (size_t k = 0; k < half; ++k) {
    const float f = std::exp(static_cast<float>(k) * step);
    const float arg = w * f;
    emb[k] = std::sin(arg);
    emb[half + k] = std::cos(arg);
  }
  return emb;
}

}  // namespace lgc
