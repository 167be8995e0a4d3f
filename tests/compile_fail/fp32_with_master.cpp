// Must NOT compile: fp32 weights already are the master weights.
// expect: Precision<fp32, fp32_master> is redundant
#include "ampkit/precision.hpp"
ampkit::Precision<ampkit::fp32, ampkit::fp32_master> p;
