// Must NOT compile: the compute type is a tag, not a C++ scalar type.
// expect: Compute must be ampkit::fp32, ampkit::fp16 or ampkit::bf16
#include "ampkit/precision.hpp"
ampkit::Precision<float> p;
