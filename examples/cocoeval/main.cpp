// ampkit_cocoeval GT.json RESULTS.json [--json] [--arrays]: pycocotools-exact COCO keypoint AP.
// The same command is `dekr_amp cocoeval`; this standalone binary lets scripts (and the
// pycocotools peer test) call the evaluator without the training application.
#include <string>
#include <vector>

#include "ampkit/eval/cocoeval_command.hpp"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return ampkit::eval::cocoeval_command(args);
}
