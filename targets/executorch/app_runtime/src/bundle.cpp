#include "lgc/bundle.h"

#if defined(__APPLE__)
#include <CommonCrypto/CommonDigest.h>  // iOS and macOS: the system's digest, no OpenSSL to ship
#else
#include <openssl/evp.h>
#endif

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "lgc/error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace lgc {
namespace {

// An SD-1.5 manifest is tens of KiB; anything near this is not a manifest and is refused unparsed.
constexpr std::uintmax_t kMaxManifestBytes = 16u << 20;
// Written beside the artifacts for people and never read to run the bundle, so not hashed.
const std::set<std::string> kReportFiles = {"manifest.json", "report.json", "passes.json"};

[[noreturn]] void bad(const std::string& bundle, const std::string& what) {
  throw Error(kUsage, "bundle " + bundle + ": " + what);
}

// A field the loop needs, with a message naming where it is missing or of the wrong type.
const json& at(const json& j, const std::string& key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw Error(kUsage, "manifest is invalid at " + where + ": '" + key + "' is missing");
  return j.at(key);
}

template <typename T>
T get(const json& j, const std::string& key, const std::string& where) {
  try {
    return at(j, key, where).get<T>();
  } catch (const json::exception&) {
    throw Error(kUsage, "manifest is invalid at " + where + "/" + key + ": not of the expected type");
  }
}

std::vector<double> finite_row(const json& j, const std::string& where) {
  std::vector<double> out;
  try {
    out = j.get<std::vector<double>>();
  } catch (const json::exception&) {
    throw Error(kUsage, "manifest is invalid at " + where + ": not an array of numbers");
  }
  for (double v : out)
    if (!std::isfinite(v)) throw Error(kUsage, "manifest is invalid at " + where + ": a constant is not finite");
  return out;
}

std::vector<TensorSpec> specs(const json& list, const std::string& where) {
  std::vector<TensorSpec> out;
  if (!list.is_array()) throw Error(kUsage, "manifest is invalid at " + where + ": not an array");
  for (const auto& s : list)
    out.push_back({get<std::string>(s, "name", where), get<std::vector<int64_t>>(s, "shape", where),
                   get<std::string>(s, "dtype", where)});
  return out;
}

SamplerPlan read_sampler(const json& s) {
  const std::string w = "sampler";
  SamplerPlan p;
  p.solver = s.value("solver", "");
  p.timesteps = finite_row(at(s, "timesteps", w), w + "/timesteps");
  p.input_scale = finite_row(at(s, "input_scale", w), w + "/input_scale");
  p.init_noise_sigma = get<double>(s, "init_noise_sigma", w);
  p.guidance_scale = get<double>(s, "guidance_scale", w);
  for (const auto& r : at(s, "x_coef", w)) p.x_coef.push_back(finite_row(r, w + "/x_coef"));
  for (const auto& r : at(s, "eps_coef", w)) p.eps_coef.push_back(finite_row(r, w + "/eps_coef"));
  if (s.contains("noise_coef") && !s["noise_coef"].is_null()) p.noise_coef = finite_row(s["noise_coef"], w + "/noise_coef");
  // What lgc's check_plan holds: one row per step everywhere, every row non-empty.
  const size_t n = p.timesteps.size();
  if (n == 0) throw Error(kUsage, "manifest is invalid at sampler: no timesteps");
  if (p.input_scale.size() != n || p.x_coef.size() != n || p.eps_coef.size() != n ||
      (!p.noise_coef.empty() && p.noise_coef.size() != n))
    throw Error(kUsage, "manifest is invalid at sampler: per-step arrays differ in length from timesteps");
  for (size_t i = 0; i < n; ++i)
    if (p.x_coef[i].empty() || p.eps_coef[i].empty())
      throw Error(kUsage, "manifest is invalid at sampler: step " + std::to_string(i) + " has an empty coefficient row");
  if (!std::isfinite(p.init_noise_sigma) || !std::isfinite(p.guidance_scale))
    throw Error(kUsage, "manifest is invalid at sampler: a constant is not finite");
  return p;
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(kUsage, "cannot read " + path);
  std::vector<char> buf(1 << 20);
  unsigned char md[32];
#if defined(__APPLE__)
  CC_SHA256_CTX ctx;
  CC_SHA256_Init(&ctx);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    CC_SHA256_Update(&ctx, buf.data(), static_cast<CC_LONG>(in.gcount()));
  }
  CC_SHA256_Final(md, &ctx);
#else
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
#endif
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char byte : md) {
    out += hex[byte >> 4];
    out += hex[byte & 15];
  }
  return out;
}

std::string confined(const std::string& bundle, const std::string& rel) {
  bool plain = !rel.empty() && rel[0] != '/' && rel[0] != '~' && rel.find('\\') == std::string::npos;
  for (unsigned char c : rel) plain = plain && c >= 32;
  for (const auto& part : fs::path(rel)) plain = plain && part != "..";
  if (!plain) bad(bundle, "manifest path '" + rel + "' is not a plain relative path inside the bundle");
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(bundle, ec);
  const fs::path full = fs::weakly_canonical(fs::path(bundle) / rel, ec);
  auto r = full.begin();
  bool inside = !ec;
  for (auto b = root.begin(); inside && b != root.end(); ++b, ++r) inside = r != full.end() && *r == *b;
  if (!inside) bad(bundle, "manifest path '" + rel + "' resolves outside the bundle");
  return (fs::path(bundle) / rel).string();
}

Manifest read_manifest(const std::string& bundle) {
  if (!fs::is_directory(bundle)) throw Error(kUsage, "bundle folder not found: " + bundle);
  const fs::path path = fs::path(bundle) / "manifest.json";
  if (!fs::is_regular_file(path)) throw Error(kUsage, "not an lgc bundle (no manifest.json): " + bundle);
  if (fs::file_size(path) > kMaxManifestBytes) throw Error(kUsage, path.string() + ": more bytes than a manifest holds; not an lgc manifest");
  std::ifstream in(path, std::ios::binary);
  Manifest m;
  try {
    m.raw = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(kUsage, path.string() + ": not valid JSON (" + e.what() + ")");
  }
  const json& j = m.raw;
  if (!j.is_object() || !j.contains("schema_version") || !j["schema_version"].is_number_integer())
    throw Error(kUsage, "manifest is invalid at (top level): 'schema_version' is missing");
  const int version = j["schema_version"].get<int>();
  if (version > kSchemaVersion)
    throw Error(kUsage, "manifest schema_version " + std::to_string(version) + " is newer than this runtime understands (" +
                            std::to_string(kSchemaVersion) + "); upgrade the app runtime");
  if (version < kSchemaVersion)
    throw Error(kUsage, "manifest schema_version " + std::to_string(version) + " predates the file list every bundle now carries; rebuild the bundle");
  m.target = get<std::string>(j, "target", "(top level)");
  if (j.contains("verified_with") && j["verified_with"].is_object())
    m.verified_with = get<std::string>(j["verified_with"], "target", "verified_with");
  const json& tok = at(j, "tokenizer", "(top level)");
  m.tokenizer_folder = get<std::string>(tok, "folder", "tokenizer");
  m.max_length = get<int>(tok, "max_length", "tokenizer");
  m.bos_id = get<int64_t>(tok, "bos_id", "tokenizer");
  m.eos_id = get<int64_t>(tok, "eos_id", "tokenizer");
  m.pad_id = get<int64_t>(tok, "pad_id", "tokenizer");
  m.uncond_prompt = get<std::string>(tok, "uncond_prompt", "tokenizer");
  if (m.max_length < 2) throw Error(kUsage, "manifest is invalid at tokenizer/max_length: less than 2");
  const json& g = at(j, "guidance", "(top level)");
  m.guidance_mode = get<std::string>(g, "mode", "guidance");
  if (m.guidance_mode != "cfg_batch" && m.guidance_mode != "embedding" && m.guidance_mode != "none")
    throw Error(kUsage, "manifest is invalid at guidance/mode: '" + m.guidance_mode + "'");
  if (g.contains("timestep_cond") && !g["timestep_cond"].is_null())
    for (double v : finite_row(g["timestep_cond"], "guidance/timestep_cond")) m.timestep_cond.push_back(static_cast<float>(v));
  if (m.guidance_mode == "embedding" && m.timestep_cond.empty())
    throw Error(kUsage, "manifest is invalid at guidance: mode 'embedding' without timestep_cond");
  m.latent_shape = get<std::vector<int64_t>>(at(j, "latent", "(top level)"), "shape", "latent");
  m.sampler = read_sampler(at(j, "sampler", "(top level)"));
  for (const auto& [name, c] : at(j, "components", "(top level)").items()) {
    const std::string w = "components/" + name;
    Component comp;
    comp.file = get<std::string>(c, "file", w);
    comp.sha256 = get<std::string>(c, "sha256", w);
    comp.runtime = get<std::string>(c, "runtime", w);
    comp.inputs = specs(at(c, "inputs", w), w + "/inputs");
    comp.outputs = specs(at(c, "outputs", w), w + "/outputs");
    if (c.contains("kernel_libraries")) comp.kernel_libraries = get<std::vector<std::string>>(c, "kernel_libraries", w);
    if (c.contains("methods"))
      for (const auto& [method, spec] : c["methods"].items()) {
        comp.feeders[method] = get<std::string>(spec, "feeds", w + "/methods/" + method);
        comp.method_inputs[method] = specs(at(spec, "inputs", w + "/methods/" + method), w + "/methods/" + method + "/inputs");
      }
    m.components[name] = comp;
  }
  for (const char* name : {"text_encoder", "unet", "vae_decoder"})
    if (!m.components.count(name)) throw Error(kUsage, std::string("manifest is invalid at components: '") + name + "' is missing");
  try {
    m.files = at(j, "files", "(top level)").get<std::map<std::string, std::string>>();
  } catch (const json::exception&) {
    throw Error(kUsage, "manifest is invalid at files: not a map of path to sha256");
  }
  return m;
}

void verify_bundle_files(const std::string& bundle, const Manifest& manifest) {
  std::set<std::string> present;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(bundle, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string rel = fs::relative(it->path(), bundle).generic_string();
    if (it->is_symlink()) bad(bundle, rel + " is a symbolic link; a bundle holds plain files only");
    if (it->is_regular_file() && !kReportFiles.count(rel)) present.insert(rel);
  }
  if (ec) bad(bundle, "cannot list its files (" + ec.message() + ")");
  std::set<std::string> listed;
  for (const auto& [rel, digest] : manifest.files) {
    const std::string path = confined(bundle, rel);
    if (!fs::is_regular_file(path)) bad(bundle, rel + " is listed in the manifest but missing");
    const std::string actual = sha256_file(path);
    if (actual != digest)
      bad(bundle, rel + " was altered after build (sha256 " + actual.substr(0, 12) + "... != manifest " + digest.substr(0, 12) + "...)");
    listed.insert(fs::relative(path, bundle).generic_string());
  }
  for (const auto& rel : present)
    if (!listed.count(rel)) bad(bundle, rel + " is not listed in the manifest; a bundle ships only what its manifest hashes");
  for (const auto& [name, comp] : manifest.components) {
    const std::string path = confined(bundle, comp.file);
    if (!fs::is_regular_file(path)) bad(bundle, name + " file " + comp.file + " is missing");
    if (manifest.files.count(comp.file) == 0 || manifest.files.at(comp.file) != comp.sha256)
      bad(bundle, comp.file + " was altered after build (its sha256 differs from the manifest's entry for " + name + ")");
  }
  const std::string tok = confined(bundle, manifest.tokenizer_folder);
  if (!fs::is_directory(tok) || fs::is_empty(tok)) bad(bundle, "tokenizer folder " + manifest.tokenizer_folder + " is missing");
}

}  // namespace lgc
