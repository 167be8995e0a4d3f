/// @brief ampkit::Error and the precondition macros every layer uses at its public entry points.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace ampkit {

/// The one exception type ampkit throws. The message is complete on its own: what went wrong,
/// the numbers involved and, where there is one, what to do about it. `where()` is file:line of
/// the check that fired (empty for errors raised without a location).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, std::string where = {})
      : std::runtime_error(where.empty() ? message : message + " [" + where + "]"),
        where_(std::move(where)) {}

  const std::string& where() const noexcept { return where_; }

 private:
  std::string where_;
};

/// Out-of-memory on a device or host pool; a separate type so a caller can retry smaller.
class OutOfMemoryError : public Error {
 public:
  using Error::Error;
};

namespace detail {

/// Concatenate streamable values into one string. (g++ 12 has no <format>; fmt is not a
/// dependency of the library headers.)
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

inline std::string location(const char* file, int line) {
  std::string_view f(file);
  // Keep the path from include/ or tests/ on, so messages don't carry the build machine's layout.
  for (std::string_view root : {"include/", "tests/", "examples/", "bench/"}) {
    if (auto pos = f.rfind(root); pos != std::string_view::npos) {
      f = f.substr(pos);
      break;
    }
  }
  return concat(f, ":", line);
}

}  // namespace detail
}  // namespace ampkit

/// Throw ampkit::Error with the streamed message unless `cond` holds.
/// Usage: AMPKIT_CHECK(x.c == w.c, "conv2d: input has ", x.c, " channels, weights expect ", w.c);
#define AMPKIT_CHECK(cond, ...)                                                                \
  do {                                                                                         \
    if (!(cond)) [[unlikely]]                                                                  \
      throw ::ampkit::Error(::ampkit::detail::concat(__VA_ARGS__),                             \
                            ::ampkit::detail::location(__FILE__, __LINE__));                   \
  } while (0)

/// Throw ampkit::Error with the streamed message unconditionally.
#define AMPKIT_FAIL(...)                                                                       \
  throw ::ampkit::Error(::ampkit::detail::concat(__VA_ARGS__),                                 \
                        ::ampkit::detail::location(__FILE__, __LINE__))
