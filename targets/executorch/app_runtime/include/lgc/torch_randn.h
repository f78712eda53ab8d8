// Standard normal samples drawn as torch.randn draws them on the CPU for a float32 tensor of 16 or more
// elements, so a seed gives an app the same initial latents (and ancestral noise) as lgc's harness:
// MT19937 seeded like torch.Generator().manual_seed(seed), 24-bit uniforms, Box-Muller over blocks of
// 16 (u1 from the first 8, u2 from the next 8), the last block redrawn when the count is not a multiple
// of 16. This is torch's portable kernel bit for bit; torch's AVX2 kernel (x86 hosts) uses polynomial
// log/sin/cos and differs from it in the last bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>

namespace lgc {

class TorchGenerator {
 public:
  explicit TorchGenerator(uint64_t seed) : engine_(static_cast<uint32_t>(seed)) {}

  // Fills out[0..n) (n >= 16), advancing the generator as torch.randn would.
  void randn(float* out, size_t n);

 private:
  float uniform() { return static_cast<float>(static_cast<double>(engine_() & ((1u << 24) - 1)) * (1.0 / (1u << 24))); }
  std::mt19937 engine_;
};

}  // namespace lgc
