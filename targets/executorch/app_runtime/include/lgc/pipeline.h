// An ExecuTorch bundle, verified and loaded: text in, image out, on ExecuTorch's C++ Module API.
//
// This is what an Android (JNI/NDK) or iOS (Objective-C++) app embeds. Construction verifies the bundle
// (every file at its manifest sha256, nothing unlisted, nothing outside) before any artifact is opened,
// loads the tokenizer and the three programs, and computes the U-Net's time_features rows once per step
// of the schedule. generate() then runs the manifest's loop (sampler.h).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lgc/bundle.h"
#include "lgc/clip_tokenizer.h"
#include "lgc/sampler.h"

namespace lgc {

struct GenerateOptions {
  uint64_t seed = 0;                      // initial latents and step noise, as torch.Generator().manual_seed(seed)
  std::optional<double> guidance;         // default: the manifest's scale
  std::string negative;                   // cfg_batch only; default: the manifest's uncond prompt
  std::optional<Floats> initial_noise;    // pin the initial latents instead of drawing them from seed
  std::function<void(int step, int steps)> on_step;
};

struct Generation {
  Floats image;    // [1, 3, H, W] in [0, 1]
  Floats latents;  // [1, C, h, w]
  int height = 0, width = 0;
  std::map<std::string, double> ms;   // per component: milliseconds spent in it
  std::map<std::string, int> calls;   // per component: how many times it ran
};

class Pipeline {
 public:
  explicit Pipeline(const std::string& bundle);
  ~Pipeline();
  Generation generate(const std::string& prompt, const GenerateOptions& options);

  const Manifest& manifest() const { return manifest_; }
  const ClipTokenizer& tokenizer() const { return *tokenizer_; }
  std::vector<int64_t> tokenize(const std::string& prompt) const;
  // Initial latents of a seed: torch.randn((1, C, h, w), generator=torch.Generator().manual_seed(seed)).
  Floats initial_noise(uint64_t seed) const;

 private:
  struct Loaded;
  std::string bundle_;
  Manifest manifest_;
  std::unique_ptr<ClipTokenizer> tokenizer_;
  std::unique_ptr<Loaded> loaded_;
  std::map<std::string, double> ms_;
  std::map<std::string, int> calls_;
};

// Route ExecuTorch's log lines through a filter: errors always, the rest only with `verbose`.
void quiet_executorch_logs(bool verbose);

}  // namespace lgc
