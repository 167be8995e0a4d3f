// libFuzzer target: ampkit::fuzz::mask (see targets.hpp). Built by tools/fuzz.sh.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return ampkit::fuzz::mask(data, size);
}
