#include "lgc/pipeline.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#include "lgc/error.h"
#include "lgc/torch_randn.h"

namespace fs = std::filesystem;
using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace lgc {
namespace {

bool g_verbose_logs = false;

void emit_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line, const char* message,
              size_t length) {
  if (!g_verbose_logs && level != kError && level != kFatal) return;
  while (length > 0 && (message[length - 1] == '\n' || message[length - 1] == '\r')) --length;
  std::fprintf(stderr, "executorch: %s:%zu] %.*s\n", filename, line, static_cast<int>(length), message);
}

ScalarType scalar_type(const std::string& dtype, const std::string& where) {
  if (dtype == "float32") return ScalarType::Float;
  if (dtype == "int64") return ScalarType::Long;
  if (dtype == "int32") return ScalarType::Int;
  throw Error(kUnsupported, where + ": input dtype " + dtype + " is not one the app runtime feeds (float32, int64, int32)");
}

}  // namespace

void quiet_executorch_logs(bool verbose) {
  g_verbose_logs = verbose;
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
}

// One program of the bundle and the manifest's description of its methods.
struct Program {
  std::string name, path;
  Component spec;
  std::unique_ptr<Module> module;

  Program(const std::string& bundle, const std::string& component, const Component& c) : name(component), spec(c) {
    if (c.runtime != "executorch")
      throw Error(kUnsupported, component + " runs in '" + c.runtime + "', not ExecuTorch; the C++ app runtime runs ExecuTorch bundles (android-*)");
    path = confined(bundle, c.file);
    module = std::make_unique<Module>(path, Module::LoadMode::Mmap);
    load("forward");
    for (const auto& [method, feeds] : c.feeders) load(method);
  }

  void load(const std::string& method) {
    const auto err = module->load_method(method);
    if (err != executorch::runtime::Error::Ok)
      throw Error(kRuntime, fs::path(path).filename().string() + " failed in the ExecuTorch runtime: cannot load method '" + method +
                                "' (error " + std::to_string(static_cast<int>(err)) + ")");
  }

  // Runs `method` on tensors given as (data, dtype, shape) and returns its first output as floats.
  Floats run(const std::string& method, const std::vector<std::pair<const void*, const TensorSpec*>>& inputs) {
    std::vector<executorch::extension::TensorPtr> keep;
    std::vector<EValue> values;
    for (const auto& [data, ts] : inputs) {
      std::vector<executorch::aten::SizesType> sizes(ts->shape.begin(), ts->shape.end());
      keep.push_back(executorch::extension::from_blob(const_cast<void*>(data), sizes, scalar_type(ts->dtype, name)));
      values.emplace_back(*keep.back());
    }
    auto result = module->execute(method, values);
    if (!result.ok())
      throw Error(kRuntime, fs::path(path).filename().string() + " failed in the ExecuTorch runtime: method '" + method + "' returned error " +
                                std::to_string(static_cast<int>(result.error())));
    const auto& out = result.get().at(0).toTensor();
    if (out.scalar_type() != ScalarType::Float) throw Error(kRuntime, name + ": output is not float32");
    const float* p = out.const_data_ptr<float>();
    return Floats(p, p + out.numel());  // copied: the output lives in the method's planned memory
  }
};

struct Pipeline::Loaded {
  std::unique_ptr<Program> text_encoder, unet, vae_decoder;
  std::map<float, Floats> time_rows;  // timestep -> the U-Net's time_features row, computed once
};

Pipeline::Pipeline(const std::string& bundle) : bundle_(bundle), manifest_(read_manifest(bundle)) {
  verify_bundle_files(bundle_, manifest_);  // before anything of the bundle is opened
  if (!manifest_.verified_with.empty())
    throw Error(kUnsupported, manifest_.target + " artifacts are checked through a twin; the C++ app runtime runs ExecuTorch bundles (android-*)");
  tokenizer_ = std::make_unique<ClipTokenizer>(confined(bundle_, manifest_.tokenizer_folder));
  if (tokenizer_->bos_id() != manifest_.bos_id || tokenizer_->eos_id() != manifest_.eos_id)
    throw Error(kUsage, "bundle " + bundle_ + ": tokenizer.json's start/end token ids differ from the manifest's");
  loaded_ = std::make_unique<Loaded>();
  loaded_->text_encoder = std::make_unique<Program>(bundle_, "text_encoder", manifest_.components.at("text_encoder"));
  loaded_->unet = std::make_unique<Program>(bundle_, "unet", manifest_.components.at("unet"));
  loaded_->vae_decoder = std::make_unique<Program>(bundle_, "vae_decoder", manifest_.components.at("vae_decoder"));
  // Every forward input must be one the loop knows how to feed: refuse a bundle of another form up front.
  const std::set<std::string> known = {"sample", "timestep", "encoder_hidden_states", "timestep_cond"};
  for (const auto& in : loaded_->unet->spec.inputs)
    if (!known.count(in.name) && in.name != "time_features")
      throw Error(kUnsupported, "unet input '" + in.name + "' is not one the app runtime feeds (sample, timestep, encoder_hidden_states, timestep_cond)");
  for (const auto& [method, feeds] : loaded_->unet->spec.feeders)
    if (method != "time_features" || feeds != "time_features" || loaded_->unet->spec.method_inputs.at(method).size() != 1 ||
        loaded_->unet->spec.method_inputs.at(method)[0].dtype != "float32")
      throw Error(kUnsupported, "unet method '" + method + "' feeding '" + feeds + "' is not one the app runtime knows (time_features)");
}

Pipeline::~Pipeline() = default;

std::vector<int64_t> Pipeline::tokenize(const std::string& prompt) const {
  return tokenizer_->encode(prompt, manifest_.max_length, manifest_.pad_id);
}

Floats Pipeline::initial_noise(uint64_t seed) const {
  int64_t n = 1;
  for (auto d : manifest_.latent_shape) n *= d;
  Floats noise(static_cast<size_t>(n));
  TorchGenerator(seed).randn(noise.data(), noise.size());
  return noise;
}

Generation Pipeline::generate(const std::string& prompt, const GenerateOptions& o) {
  const Manifest& m = manifest_;
  LoopInputs in;
  in.cfg_batch = m.guidance_mode == "cfg_batch";
  in.guidance_scale = m.sampler.guidance_scale;
  in.timestep_cond = m.timestep_cond;
  if (o.guidance) {
    if (m.guidance_mode == "cfg_batch")
      in.guidance_scale = *o.guidance;
    else if (m.guidance_mode == "embedding")  // an LCM-style U-Net takes the scale as an input embedding
      in.timestep_cond = guidance_embedding(*o.guidance, m.timestep_cond.size());
    else
      throw Error(kUsage, "this bundle's U-Net takes no guidance (guidance mode 'none'); drop --guidance");
  }
  if (!o.negative.empty() && !in.cfg_batch)
    throw Error(kUsage, "--negative needs classifier-free guidance; this bundle's guidance mode is '" + m.guidance_mode + "'");
  in.ids_cond = tokenize(prompt);
  in.ids_uncond = tokenize(o.negative.empty() ? m.uncond_prompt : o.negative);
  in.noise = o.initial_noise ? *o.initial_noise : initial_noise(o.seed);
  int64_t latent_numel = 1;
  for (auto d : m.latent_shape) latent_numel *= d;
  if (static_cast<int64_t>(in.noise.size()) != latent_numel)
    throw Error(kUsage, "initial noise has " + std::to_string(in.noise.size()) + " values; the latents have " + std::to_string(latent_numel));
  in.noise_seed = o.seed;
  in.on_step = o.on_step;
  ms_.clear(), calls_.clear();

  auto timed = [this](const std::string& name, auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    auto out = fn();
    ms_[name] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    calls_[name] += 1;
    return out;
  };
  Loaded& L = *loaded_;
  LoopComponents c;
  c.text_encoder = [&](const std::vector<int64_t>& ids) {
    const auto& spec = L.text_encoder->spec.inputs.at(0);
    if (spec.dtype == "int32") {
      std::vector<int32_t> ids32(ids.begin(), ids.end());
      return timed("text_encoder", [&] { return L.text_encoder->run("forward", {{ids32.data(), &spec}}); });
    }
    return timed("text_encoder", [&] { return L.text_encoder->run("forward", {{ids.data(), &spec}}); });
  };
  c.unet = [&](const Floats& sample, float t, const Floats& embeds, const Floats& tcond) {
    const Program& u = *L.unet;
    const Floats* row = nullptr;
    if (!u.spec.feeders.empty()) {  // time_features(t): once per distinct timestep, then kept
      auto it = L.time_rows.find(t);
      if (it == L.time_rows.end()) {
        const TensorSpec& t_spec = u.spec.method_inputs.at("time_features").at(0);  // the timestep, [1]
        Floats out = timed("unet.time_features", [&] { return L.unet->run("time_features", {{&t, &t_spec}}); });
        it = L.time_rows.emplace(t, std::move(out)).first;
      }
      row = &it->second;
    }
    std::vector<std::pair<const void*, const TensorSpec*>> inputs;
    for (const auto& spec : u.spec.inputs) {
      if (spec.name == "sample") inputs.emplace_back(sample.data(), &spec);
      else if (spec.name == "timestep") inputs.emplace_back(&t, &spec);
      else if (spec.name == "time_features") inputs.emplace_back(row->data(), &spec);
      else if (spec.name == "encoder_hidden_states") inputs.emplace_back(embeds.data(), &spec);
      else if (spec.name == "timestep_cond") {
        if (tcond.empty()) throw Error(kUsage, "the U-Net takes timestep_cond but the manifest gives none");
        inputs.emplace_back(tcond.data(), &spec);
      }
    }
    return timed("unet", [&] { return L.unet->run("forward", inputs); });
  };
  c.vae_decoder = [&](const Floats& latents) {
    return timed("vae_decoder", [&] { return L.vae_decoder->run("forward", {{latents.data(), &L.vae_decoder->spec.inputs.at(0)}}); });
  };
  LoopResult r = run_loop(m.sampler, c, in);
  Generation g;
  g.image = std::move(r.image);
  g.latents = std::move(r.latents);
  const auto& shape = m.components.at("vae_decoder").outputs.at(0).shape;
  g.height = static_cast<int>(shape.at(2));
  g.width = static_cast<int>(shape.at(3));
  g.ms = ms_;
  g.calls = calls_;
  return g;
}

}  // namespace lgc
