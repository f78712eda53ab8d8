// A bundle's manifest, read and checked before anything of the bundle is loaded.
//
// The same rules as lgc's Python `verify_bundle_files`: every file but the reports is listed with its
// sha256 and matches it, nothing unlisted, no symbolic link, no path outside the bundle folder. So the
// sha256 of manifest.json stands for the whole bundle: an app can pin it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lgc {

// The newest manifest schema this runtime reads (lgc's compiler/manifest.py SCHEMA_VERSION).
constexpr int kSchemaVersion = 2;

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  int64_t numel() const;
};

struct Component {
  std::string file;  // relative to the bundle folder
  std::string sha256;
  std::string runtime;
  std::vector<TensorSpec> inputs, outputs;
  // Other methods of the program that compute one of forward's inputs: {method: input name it feeds}.
  std::map<std::string, std::string> feeders;
  std::map<std::string, std::vector<TensorSpec>> method_inputs;  // of those methods
  std::vector<std::string> kernel_libraries;
};

struct SamplerPlan {
  std::vector<double> timesteps, input_scale, noise_coef;  // noise_coef empty when no step draws noise
  std::vector<std::vector<double>> x_coef, eps_coef;
  double init_noise_sigma = 1.0;
  double guidance_scale = 1.0;
  std::string solver;
};

struct Manifest {
  std::string target;
  std::string verified_with;  // the twin target whose artifacts stood in for these (phone-only bundles), or ""
  std::string tokenizer_folder;
  int max_length = 0;
  int64_t bos_id = 0, eos_id = 0, pad_id = 0;
  std::string uncond_prompt;
  std::string guidance_mode;                     // cfg_batch, embedding or none
  std::vector<float> timestep_cond;              // embedding mode: the U-Net's extra input row
  std::vector<int64_t> latent_shape;             // [1, C, h, w]
  SamplerPlan sampler;
  std::map<std::string, Component> components;  // text_encoder, unet, vae_decoder
  std::map<std::string, std::string> files;      // every shipped file -> sha256
  nlohmann::json raw;                            // the whole manifest, for fields this struct does not name
};

// manifest.json of `bundle`, parsed and checked (schema version, the fields the loop reads, the sampler's
// arrays agreeing in length and finite). Throws lgc::Error (exit 2) naming what is wrong.
Manifest read_manifest(const std::string& bundle);

// Every file at its sha256, nothing unlisted, no symlink, no path outside (exit 2 otherwise).
void verify_bundle_files(const std::string& bundle, const Manifest& manifest);

// `bundle`/`rel` for a manifest path that is a plain relative path inside the bundle (exit 2 otherwise).
std::string confined(const std::string& bundle, const std::string& rel);

// Hex sha256 of a file's bytes.
std::string sha256_file(const std::string& path);

}  // namespace lgc
