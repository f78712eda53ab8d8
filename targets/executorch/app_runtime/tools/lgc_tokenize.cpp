// lgc-tokenize: CLIP token ids of prompts, as the app runtime computes them.
//
//   lgc-tokenize TOKENIZER_FOLDER MAX_LENGTH PAD_ID < prompts.jsonl
//
// Reads one JSON string per line on stdin and prints one JSON array of ids per line: the padded ids
// an app feeds the text encoder. lgc's tests compare them with transformers' CLIPTokenizer.
#include <cstdio>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "lgc/clip_tokenizer.h"
#include "lgc/error.h"

int main(int argc, char** argv) {
  try {
    if (argc != 4) throw lgc::Error(lgc::kUsage, "usage: lgc-tokenize TOKENIZER_FOLDER MAX_LENGTH PAD_ID < prompts.jsonl");
    const lgc::ClipTokenizer tok(argv[1]);
    const int max_length = std::stoi(argv[2]);
    const long long pad = std::stoll(argv[3]);
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.empty()) continue;
      const std::string prompt = nlohmann::json::parse(line).get<std::string>();
      std::cout << nlohmann::json(tok.encode(prompt, max_length, pad)).dump() << "\n";
    }
    return 0;
  } catch (const lgc::Error& e) {
    std::fprintf(stderr, "lgc-tokenize: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lgc-tokenize: error: %s\n", e.what());
    return lgc::kUsage;
  }
}
