// libFuzzer target: ampkit::fuzz::config (see targets.hpp). Built by tools/fuzz.sh.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return ampkit::fuzz::config(data, size);
}
