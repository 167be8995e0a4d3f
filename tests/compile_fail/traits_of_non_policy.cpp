// Must NOT compile: templates taking a policy are constrained by PrecisionPolicy.
// expect: PrecisionPolicy
#include "ampkit/precision.hpp"
using S = ampkit::storage_t<float>;
S s;
