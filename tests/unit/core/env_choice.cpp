// core/env_choice.hpp: the one parser behind the AMPKIT_* engine switches. The switches
// themselves live in CUDA headers; their tables are repeated here with the same values, so a
// misspelt value's message and the accepted spellings are checked without a GPU.
#include <doctest/doctest.h>

#include <optional>
#include <string>

#include "ampkit/core/env_choice.hpp"

using namespace ampkit;

namespace {
enum class Gemm { kAuto, kAlways, kNever };
enum class Graph { kBenchmark, kAlways, kNever };

Gemm gemm(const char* v) {
  return env_choice_from("AMPKIT_CONV_GEMM", v,
                         {{"auto", Gemm::kAuto}, {"always", Gemm::kAlways}, {"never", Gemm::kNever}},
                         Gemm::kAuto, "auto");
}
std::optional<Graph> graph(const char* v) {
  return env_choice_from<std::optional<Graph>>("AMPKIT_CUDNN_GRAPH_API", v,
                                               {{"benchmark", Graph::kBenchmark},
                                                {"always", Graph::kAlways},
                                                {"never", Graph::kNever},
                                                {"1", Graph::kAlways},
                                                {"0", Graph::kNever}},
                                               std::nullopt, "CudnnOptions::graph_api, benchmark by default");
}
bool flag(const char* v) {
  return env_choice_from("AMPKIT_BN_FLAT_PACKS", v, {{"1", true}, {"0", false}}, true, "1");
}
}  // namespace

TEST_CASE("env_choice: unset or empty gives the default, every accepted spelling its value") {
  CHECK(gemm(nullptr) == Gemm::kAuto);
  CHECK(gemm("") == Gemm::kAuto);
  CHECK(gemm("auto") == Gemm::kAuto);
  CHECK(gemm("always") == Gemm::kAlways);
  CHECK(gemm("never") == Gemm::kNever);
  CHECK(!graph(nullptr).has_value());  // unset: the per-context option decides
  CHECK(graph("benchmark") == Graph::kBenchmark);
  CHECK(graph("1") == Graph::kAlways);
  CHECK(graph("0") == Graph::kNever);
  CHECK(flag(nullptr));
  CHECK_FALSE(flag("0"));
  CHECK(flag("1"));
}

TEST_CASE(
    "env_choice: anything else is one error naming the variable, the value, the choices and the default") {
  // Case and near-misses too: "off" would otherwise have left the GEMM path on unnoticed.
  for (const char* bad : {"off", "Never", "yes", " never", "2"}) {
    CAPTURE(bad);
    const std::string want = std::string("AMPKIT_CONV_GEMM=") + bad +
                             " is not one of auto, always, never; unset it for the default (auto)";
    CHECK_THROWS_WITH_AS(gemm(bad), doctest::Contains(want.c_str()), Error);
  }
  CHECK_THROWS_WITH_AS(
      graph("on"),
      doctest::Contains("AMPKIT_CUDNN_GRAPH_API=on is not one of benchmark, always, never, 1, 0"), Error);
  CHECK_THROWS_WITH_AS(flag("true"), doctest::Contains("AMPKIT_BN_FLAT_PACKS=true is not one of 1, 0"),
                       Error);
}

TEST_CASE("env_choice: reads the process environment") {
  ::setenv("AMPKIT_TEST_ENV_CHOICE", "always", 1);
  CHECK(env_choice("AMPKIT_TEST_ENV_CHOICE", {{"auto", Gemm::kAuto}, {"always", Gemm::kAlways}}, Gemm::kAuto,
                   "auto") == Gemm::kAlways);
  ::unsetenv("AMPKIT_TEST_ENV_CHOICE");
  CHECK(env_choice("AMPKIT_TEST_ENV_CHOICE", {{"auto", Gemm::kAuto}, {"always", Gemm::kAlways}}, Gemm::kAuto,
                   "auto") == Gemm::kAuto);
}
