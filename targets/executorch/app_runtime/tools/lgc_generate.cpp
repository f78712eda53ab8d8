// lgc-generate: a prompt to PNGs from an ExecuTorch bundle, the app runtime's command line.
//
//   lgc-generate BUNDLE "a photo of a cat" [-o out.png] [--seed N] [-n COUNT] [--guidance G]
//                [--negative "..."] [--noise FILE] [--noise-out FILE] [--raw FILE] [--verbose]
//
// --noise reads the initial latents (float32, little-endian, the manifest's latent shape) instead of
// drawing them from the seed; --noise-out writes the initial latents used; --raw writes the decoder's
// float32 image [1, 3, H, W].
// Errors: one line on stderr, exit 2 (usage, bad or tampered bundle), 4 (bundle form not supported),
// 5 (the runtime failed).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "lgc/error.h"
#include "lgc/pipeline.h"
#include "png_file.h"

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: lgc-generate BUNDLE PROMPT [-o OUT.png] [--seed N] [-n COUNT] [--guidance G] [--negative TEXT]\n"
    "                    [--noise FILE] [--noise-out FILE] [--raw FILE] [--verbose]\n";

struct Args {
  std::string bundle, prompt, out = "out.png", negative, noise_file, raw_file, noise_out;
  uint64_t seed = 0;
  int count = 1;
  std::optional<double> guidance;
  bool verbose = false;
};

double number(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const double d = std::stod(v, &used);
    if (used == v.size()) return d;
  } catch (const std::exception&) {
  }
  throw lgc::Error(lgc::kUsage, flag + " takes a number, got '" + v + "'");
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  bool options = true;  // until "--": after it, a prompt may start with '-'
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (!options || s == "--") {
      if (s != "--" || !options) pos.push_back(s);
      options = false;
      continue;
    }
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw lgc::Error(lgc::kUsage, s + " needs a value");
      return argv[++i];
    };
    if (s == "-h" || s == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (s == "-o" || s == "--out") a.out = value();
    else if (s == "--seed") {
      const double d = number(s, value());
      if (d < 0 || d != static_cast<double>(static_cast<uint64_t>(d))) throw lgc::Error(lgc::kUsage, "--seed takes a non-negative integer");
      a.seed = static_cast<uint64_t>(d);
    } else if (s == "-n") {
      const double d = number(s, value());
      if (d < 1 || d != static_cast<int>(d)) throw lgc::Error(lgc::kUsage, "-n must be a whole number of at least 1");
      a.count = static_cast<int>(d);
    } else if (s == "--guidance") a.guidance = number(s, value());
    else if (s == "--negative") a.negative = value();
    else if (s == "--noise") a.noise_file = value();
    else if (s == "--raw") a.raw_file = value();
    else if (s == "--noise-out") a.noise_out = value();
    else if (s == "--verbose") a.verbose = true;
    else if (s.size() > 1 && s[0] == '-') throw lgc::Error(lgc::kUsage, "unknown option " + s + " (a prompt starting with '-' goes after --)");
    else pos.push_back(s);
  }
  if (pos.size() != 2) throw lgc::Error(lgc::kUsage, "expected BUNDLE and PROMPT (see --help)");
  a.bundle = pos[0], a.prompt = pos[1];
  if (fs::path(a.out).extension() != ".png") throw lgc::Error(lgc::kUsage, "-o must name a .png file, got " + a.out);
  return a;
}

std::vector<float> read_floats(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw lgc::Error(lgc::kUsage, "cannot read " + path);
  const auto bytes = static_cast<size_t>(in.tellg());
  if (bytes != count * sizeof(float))
    throw lgc::Error(lgc::kUsage, path + ": " + std::to_string(bytes) + " bytes; the latents are " + std::to_string(count) + " float32 values");
  std::vector<float> v(count);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(bytes));
  return v;
}

void write_floats(const std::string& path, const std::vector<float>& v) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
    if (!out) throw lgc::Error(lgc::kUsage, "cannot write " + path);
  }
  fs::rename(tmp, path);
}

std::string nth(const std::string& path, int k, int count) {
  if (count == 1) return path;
  const fs::path p(path);
  return (p.parent_path() / (p.stem().string() + "-" + std::to_string(k) + p.extension().string())).string();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    lgc::quiet_executorch_logs(a.verbose);
    const auto t0 = std::chrono::steady_clock::now();
    lgc::Pipeline pipe(a.bundle);
    const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::optional<std::vector<float>> noise;
    if (!a.noise_file.empty()) {
      size_t n = 1;
      for (auto d : pipe.manifest().latent_shape) n *= static_cast<size_t>(d);
      noise = read_floats(a.noise_file, n);
    }
    std::fprintf(stderr, "bundle %s verified and loaded in %.0f ms (%s, %zu steps)\n", a.bundle.c_str(), load_ms,
                 pipe.manifest().target.c_str(), pipe.manifest().sampler.timesteps.size());
    const bool tty = isatty(2);
    for (int k = 0; k < a.count; ++k) {
      lgc::GenerateOptions o;
      o.seed = a.seed + static_cast<uint64_t>(k);
      o.guidance = a.guidance;
      o.negative = a.negative;
      o.initial_noise = noise ? noise : std::optional<std::vector<float>>(pipe.initial_noise(o.seed));
      if (!a.noise_out.empty()) write_floats(nth(a.noise_out, k, a.count), *o.initial_noise);
      o.on_step = [&](int i, int steps) {
        if (tty) std::fprintf(stderr, "\rimage %d/%d  step %d/%d", k + 1, a.count, i + 1, steps);
      };
      const lgc::Generation g = pipe.generate(a.prompt, o);
      if (tty) std::fprintf(stderr, "\r\033[K");
      const std::string path = nth(a.out, k, a.count);
      lgc::write_png(path, lgc::to_rgb8(g.image, g.height, g.width), g.width, g.height);
      if (!a.raw_file.empty()) write_floats(nth(a.raw_file, k, a.count), g.image);
      std::string times;
      for (const auto& [name, ms] : g.ms) times += "  " + name + " " + std::to_string(static_cast<long>(ms + 0.5)) + " ms/" + std::to_string(g.calls.at(name));
      std::fprintf(stderr, "wrote %s (seed %llu)%s\n", path.c_str(), static_cast<unsigned long long>(o.seed), times.c_str());
    }
    return 0;
  } catch (const lgc::Error& e) {
    std::fprintf(stderr, "lgc-generate: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lgc-generate: error: %s\n", e.what());
    return lgc::kRuntime;
  }
}
