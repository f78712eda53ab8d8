// CLIP's byte-level BPE tokenizer, read from a bundle's tokenizer.json.
//
// It reproduces what transformers' CLIPTokenizer (the `tokenizers` pipeline) gives for the same file:
// special tokens split out of the raw text, NFC, whitespace runs to one space, per-character Unicode
// lowercase, CLIP's split (<|startoftext|>, <|endoftext|>, 's 't 're 've 'm 'll 'd, letter runs, single
// digits, runs of anything else, whitespace dropped; then ByteLevel's GPT-2 split when the file asks
// for it), bytes mapped to GPT-2's printable characters,
// BPE merges by rank with "</w>" on each word's last symbol, then bos + ids[:max_length - 2] + eos
// padded with the pad id. A tokenizer.json of any other form is refused by name, never approximated.
// Unicode properties, NFC and case mapping come from ICU's C API (Android NDK API 31+, Apple's libicucore).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace lgc {

class ClipTokenizer {
 public:
  // Reads `folder`/tokenizer.json; throws lgc::Error (exit 4) if it is not CLIP's pipeline.
  explicit ClipTokenizer(const std::string& folder);

  // bos, the prompt's ids truncated to max_length - 2, eos, then pad_id up to max_length.
  std::vector<int64_t> encode(const std::string& utf8, int max_length, int64_t pad_id) const;

  // The prompt's BPE ids alone (no bos/eos, no truncation).
  std::vector<int64_t> encode_words(const std::string& utf8) const;

  int64_t bos_id() const { return bos_; }
  int64_t eos_id() const { return eos_; }

 private:
  void load(const nlohmann::json& tokenizer_json);
  void bpe(const std::string& piece, std::vector<int64_t>& out) const;
  void encode_text(const std::string& utf8, std::vector<int64_t>& out) const;
  void gpt2_split(const std::vector<int32_t>& cps, size_t begin, size_t end, std::vector<int64_t>& out) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::map<std::pair<int64_t, int64_t>, std::pair<int, int64_t>> merges_;  // (a, b) -> (rank, merged id)
  std::vector<std::pair<std::string, int64_t>> special_;                    // raw-text tokens, longest first
  std::string byte_char_[256];                                              // GPT-2's bytes_to_unicode
  std::string suffix_;
  int64_t unk_ = -1, bos_ = -1, eos_ = -1;
  bool byte_level_regex_ = true;
};

}  // namespace lgc
