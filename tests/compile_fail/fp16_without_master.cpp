// Must NOT compile: fp16 weights without fp32 master copies lose small updates.
// expect: Precision<fp16> needs a master type: use Precision<fp16, fp32_master>
#include "ampkit/precision.hpp"
ampkit::Precision<ampkit::fp16> p;
