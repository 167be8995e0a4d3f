// libFuzzer target: ampkit::fuzz::coco_results (see targets.hpp). Built by tools/fuzz.sh.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return ampkit::fuzz::coco_results(data, size);
}
