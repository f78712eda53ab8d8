// Errors the app runtime reports: one line each, with the exit code lgc's CLI uses for the same fault.
#pragma once

#include <stdexcept>
#include <string>

namespace lgc {

enum ExitCode : int {
  kUsage = 2,        // bad arguments, a bundle that is not what its manifest says, a newer schema
  kUnsupported = 4,  // a bundle this runtime cannot run exactly (a tokenizer form, a component kind)
  kRuntime = 5,      // the ExecuTorch runtime failed to load or run an artifact
};

class Error : public std::runtime_error {
 public:
  Error(int exit_code, const std::string& message) : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

}  // namespace lgc
