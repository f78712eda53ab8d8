#include "lgc/clip_tokenizer.h"

// ICU's C API only: it is what Android's NDK exposes (libicu, API level 31+) and Apple's libicucore exports.
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <fstream>
#include <limits>

#include "lgc/error.h"

using nlohmann::json;

namespace lgc {
namespace {

void append_utf8(std::string& s, UChar32 c) {
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6)), s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12)), s += static_cast<char>(0x80 | ((c >> 6) & 0x3F)), s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18)), s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F)), s += static_cast<char>(0x80 | (c & 0x3F));
  }
}

const char* kClipSplit =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

[[noreturn]] void unsupported(const std::string& what) {
  throw Error(kUnsupported, "tokenizer.json: " + what + "; lgc's app runtime implements CLIP's tokenizer only "
                            "(transformers' CLIPTokenizer pipeline): rebuild the bundle from a CLIP-tokenizer model");
}

std::string string_or_empty(const json& j) { return j.is_string() ? j.get<std::string>() : std::string(); }

const json normalizer_expected = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"},
    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]})");

// Returns whether ByteLevel splits again with GPT-2's pattern (it re-splits CLIP's <|...|> pieces).
bool check_pipeline(const json& t) {
  if (t.value("normalizer", json()) != normalizer_expected) unsupported("normalizer is not CLIP's (NFC, whitespace runs to ' ', lowercase)");
  const json& pre = t.value("pre_tokenizer", json());
  const json steps = pre.is_object() ? pre.value("pretokenizers", json()) : json();
  if (!steps.is_array() || steps.size() != 2) unsupported("pre_tokenizer is not CLIP's (Split, then ByteLevel)");
  const json& split = steps[0];
  if (split.value("type", "") != "Split" || split.value("pattern", json()).value("Regex", "") != kClipSplit ||
      split.value("behavior", "") != "Removed" || !split.value("invert", false))
    unsupported("pre_tokenizer's Split is not CLIP's pattern");
  if (steps[1].value("type", "") != "ByteLevel" || steps[1].value("add_prefix_space", true))
    unsupported("pre_tokenizer's second step is not ByteLevel without a prefix space");
  const json& m = t.value("model", json());
  if (m.value("type", "") != "BPE") unsupported("model is not BPE");
  if (!m.value("dropout", json()).is_null() || m.value("fuse_unk", false) || m.value("byte_fallback", false) ||
      m.value("ignore_merges", false) || !string_or_empty(m.value("continuing_subword_prefix", json())).empty())
    unsupported("BPE options (dropout, fuse_unk, byte_fallback, ignore_merges, continuing_subword_prefix) differ from CLIP's");
  return steps[1].value("use_regex", true);
}

// GPT-2's reversible map from bytes to printable characters (the `bytes_to_unicode` of CLIP and GPT-2).
void bytes_to_unicode(std::string (&table)[256]) {
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b].clear();
    append_utf8(table[b], printable ? b : 256 + extra++);
  }
}

bool is_letter(UChar32 c) { return (U_GET_GC_MASK(c) & U_GC_L_MASK) != 0; }
bool is_number(UChar32 c) { return (U_GET_GC_MASK(c) & U_GC_N_MASK) != 0; }
bool is_space(UChar32 c) { return u_isUWhiteSpace(c); }

// The pattern's literal alternatives, in its order: the first that matches at a position wins.
const std::vector<const char*> kContractions = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
const std::vector<const char*> kClipLiterals = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};

// Length of the first of `literals` that cps[i, end) starts with, or 0.
size_t literal_at(const std::vector<UChar32>& cps, size_t i, size_t end, const std::vector<const char*>& literals) {
  for (const char* lit : literals) {
    size_t k = 0;
    while (lit[k] && i + k < end && cps[i + k] == static_cast<UChar32>(lit[k])) ++k;
    if (!lit[k]) return k;
  }
  return 0;
}

std::string utf8_of(const std::vector<UChar32>& cps, size_t begin, size_t end) {
  std::string s;
  for (size_t k = begin; k < end; ++k) append_utf8(s, cps[k]);
  return s;
}

// UTF-8 text as UTF-16, NFC-normalized; exit 2 for bytes that are not UTF-8.
std::u16string nfc_utf16(const std::string& utf8) {
  UErrorCode status = U_ZERO_ERROR;
  int32_t len = 0;
  u_strFromUTF8(nullptr, 0, &len, utf8.data(), static_cast<int32_t>(utf8.size()), &status);
  if (status != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(status)) throw Error(kUsage, "prompt is not valid UTF-8 text");
  std::u16string raw(static_cast<size_t>(len), u'\0');
  status = U_ZERO_ERROR;
  u_strFromUTF8(raw.data(), len, nullptr, utf8.data(), static_cast<int32_t>(utf8.size()), &status);
  if (U_FAILURE(status)) throw Error(kUsage, "prompt is not valid UTF-8 text");
  const UNormalizer2* nfc = unorm2_getNFCInstance(&status);
  const int32_t need = unorm2_normalize(nfc, raw.data(), len, nullptr, 0, &status);
  if (status != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(status)) throw Error(kUsage, "prompt cannot be NFC-normalized");
  std::u16string out(static_cast<size_t>(need), u'\0');
  status = U_ZERO_ERROR;
  unorm2_normalize(nfc, raw.data(), len, out.data(), need, &status);
  if (U_FAILURE(status)) throw Error(kUsage, "prompt cannot be NFC-normalized");
  return out;
}

}  // namespace

ClipTokenizer::ClipTokenizer(const std::string& folder) {
  const std::string path = folder + "/tokenizer.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) unsupported("not found in " + folder);
  json t;
  try {
    t = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(kUsage, path + ": not valid JSON (" + e.what() + ")");
  }
  try {
    load(t);
  } catch (const json::exception& e) {
    unsupported(std::string("a field is not of the form CLIP's tokenizer.json has (") + e.what() + ")");
  }
}

void ClipTokenizer::load(const json& t) {
  byte_level_regex_ = check_pipeline(t);
  const json& m = t["model"];
  suffix_ = string_or_empty(m.value("end_of_word_suffix", json()));
  for (const auto& [tok, id] : m.at("vocab").items()) vocab_[tok] = id.get<int64_t>();
  const json unk = m.value("unk_token", json());
  if (unk.is_string() && vocab_.count(unk.get<std::string>())) unk_ = vocab_[unk.get<std::string>()];
  int rank = 0;
  for (const auto& merge : m.at("merges")) {
    std::string a, b;
    if (merge.is_string()) {  // the older "a b" form
      const std::string s = merge.get<std::string>();
      const auto sp = s.find(' ');
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else {
      a = merge.at(0).get<std::string>(), b = merge.at(1).get<std::string>();
    }
    if (!vocab_.count(a) || !vocab_.count(b) || !vocab_.count(a + b)) unsupported("merge '" + a + " " + b + "' names a token not in the vocabulary");
    merges_.emplace(std::make_pair(vocab_[a], vocab_[b]), std::make_pair(rank++, vocab_[a + b]));
  }
  for (const auto& tok : t.value("added_tokens", json::array())) {
    if (tok.value("normalized", false) || tok.value("lstrip", false) || tok.value("rstrip", false) || tok.value("single_word", false))
      unsupported("added token '" + tok.value("content", "") + "' is normalized or strips; CLIP's special tokens match raw text");
    // The model vocabulary's id wins over the listed one, as in the tokenizers library.
    const std::string content = tok.at("content").get<std::string>();
    special_.emplace_back(content, vocab_.count(content) ? vocab_.at(content) : tok.at("id").get<int64_t>());
  }
  std::sort(special_.begin(), special_.end(), [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  const json post = t.value("post_processor", json());
  if (post.value("type", "") == "RobertaProcessing") {
    bos_ = post.at("cls").at(1).get<int64_t>();
    eos_ = post.at("sep").at(1).get<int64_t>();
  } else {
    unsupported("post_processor is not RobertaProcessing (<|startoftext|> ... <|endoftext|>)");
  }
  bytes_to_unicode(byte_char_);
}

void ClipTokenizer::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  // One symbol per byte-level character; the last carries the end-of-word suffix.
  std::vector<int64_t> sym;
  for (size_t i = 0; i < piece.size(); ++i) {
    std::string ch = byte_char_[static_cast<unsigned char>(piece[i])];
    if (i + 1 == piece.size()) ch += suffix_;
    const auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      sym.push_back(it->second);
    } else if (unk_ >= 0) {
      sym.push_back(unk_);
    }  // else dropped, as the BPE model does without an unknown token
  }
  // Merge the lowest-ranked adjacent pair (leftmost among equals) until none is in the merge table.
  for (;;) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    int64_t merged = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const auto it = merges_.find({sym[i], sym[i + 1]});
      if (it != merges_.end() && it->second.first < best_rank) best_rank = it->second.first, best = i, merged = it->second.second;
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    sym[best] = merged;
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  out.insert(out.end(), sym.begin(), sym.end());
}

void ClipTokenizer::encode_text(const std::string& utf8, std::vector<int64_t>& out) const {
  const std::u16string text = nfc_utf16(utf8);
  // Lowercase one character at a time with the full mapping (as the tokenizers library does: no
  // context rules such as a final sigma); whitespace runs need no rewriting since the split drops them.
  std::vector<UChar32> cps;
  const int32_t length = static_cast<int32_t>(text.size());
  for (int32_t i = 0; i < length;) {
    const int32_t start = i;
    UChar32 c;
    U16_NEXT(text.data(), i, length, c);
    UChar lower[8];
    UErrorCode status = U_ZERO_ERROR;
    const int32_t n = u_strToLower(lower, 8, text.data() + start, i - start, "", &status);
    if (U_FAILURE(status)) throw Error(kUsage, "prompt cannot be lowercased");
    for (int32_t k = 0; k < n;) {
      U16_NEXT(lower, k, n, c);
      cps.push_back(c);
    }
  }
  const size_t n = cps.size();
  for (size_t i = 0; i < n;) {
    size_t j = i;
    const UChar32 c = cps[i];
    const size_t lit = literal_at(cps, i, n, kClipLiterals);
    if (lit) {
      j = i + lit;
    } else if (is_letter(c)) {
      while (j < n && is_letter(cps[j])) ++j;
    } else if (is_number(c)) {
      j = i + 1;
    } else if (!is_space(c)) {
      while (j < n && !is_space(cps[j]) && !is_letter(cps[j]) && !is_number(cps[j])) ++j;
    } else {
      ++i;  // whitespace separates pieces and is dropped
      continue;
    }
    if (byte_level_regex_) {
      gpt2_split(cps, i, j, out);
    } else {
      bpe(utf8_of(cps, i, j), out);
    }
    i = j;
  }
}

// GPT-2's pattern ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+) on one piece, which
// holds no whitespace: it leaves CLIP's letter, digit and symbol runs whole and splits "<|endoftext|>".
void ClipTokenizer::gpt2_split(const std::vector<UChar32>& cps, size_t begin, size_t end, std::vector<int64_t>& out) const {
  for (size_t i = begin; i < end;) {
    size_t j = i;
    const size_t lit = literal_at(cps, i, end, kContractions);
    if (lit) j = i + lit;
    else if (is_letter(cps[i])) while (j < end && is_letter(cps[j])) ++j;
    else if (is_number(cps[i])) while (j < end && is_number(cps[j])) ++j;
    else while (j < end && !is_space(cps[j]) && !is_letter(cps[j]) && !is_number(cps[j])) ++j;
    if (j == i) ++j;  // whitespace cannot occur here; never stall
    bpe(utf8_of(cps, i, j), out);
    i = j;
  }
}

std::vector<int64_t> ClipTokenizer::encode_words(const std::string& utf8) const {
  // Special tokens are found in the raw text first (leftmost, longest); the text between them is encoded.
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= utf8.size()) {
    size_t best = std::string::npos;
    const std::pair<std::string, int64_t>* hit = nullptr;
    for (const auto& sp : special_) {
      const size_t at = utf8.find(sp.first, pos);
      if (at != std::string::npos && (best == std::string::npos || at < best)) best = at, hit = &sp;
    }
    encode_text(utf8.substr(pos, best == std::string::npos ? std::string::npos : best - pos), out);
    if (!hit) break;
    out.push_back(hit->second);
    pos = best + hit->first.size();
  }
  return out;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& utf8, int max_length, int64_t pad_id) const {
  std::vector<int64_t> words = encode_words(utf8);
  std::vector<int64_t> ids{bos_};
  const size_t keep = std::min(words.size(), static_cast<size_t>(std::max(0, max_length - 2)));
  ids.insert(ids.end(), words.begin(), words.begin() + static_cast<std::ptrdiff_t>(keep));
  ids.push_back(eos_);
  while (ids.size() < static_cast<size_t>(max_length)) ids.push_back(pad_id);
  return ids;
}

}  // namespace lgc
