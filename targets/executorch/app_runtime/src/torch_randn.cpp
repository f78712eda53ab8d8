#include "lgc/torch_randn.h"

#include <cmath>

#include "lgc/error.h"

namespace lgc {
namespace {

// torch's normal_fill_16: data[j] and data[j + 8] from the pair of uniforms at those places.
void normal_fill_16(float* data) {
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1 - data[j];  // [0, 1) -> (0, 1] for the log
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2 * std::log(u1));
    const float theta = static_cast<float>(2.0 * M_PI * u2);  // in double, as torch's 2.0f * pi<double> * u2
    data[j] = radius * std::cos(theta);
    data[j + 8] = radius * std::sin(theta);
  }
}

}  // namespace

void TorchGenerator::randn(float* out, size_t n) {
  if (n < 16) throw Error(kUnsupported, "torch draws fewer than 16 normals another way; latents this small are not supported");
  for (size_t i = 0; i < n; ++i) out[i] = uniform();
  for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
  if (n % 16 != 0) {  // torch redraws the last 16 values
    float* tail = out + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform();
    normal_fill_16(tail);
  }
}

}  // namespace lgc
