/// @brief A pre-parse check for TOML text that keeps toml++ 3.3 (Debian 12's) away from an input
/// it cannot handle: a table header whose key starts with a character that cannot start a key.
///
/// Why: toml++ 3.3.0's table-header parser skips `[` (and `[[`) and whitespace, then calls its
/// key parser with the *assumption* (TOML_ASSERT_ASSUME) that the next character starts a bare or
/// quoted key. `[# x]`, `[=]` or `[{` break it: with assertions on, the process aborts; with
/// NDEBUG the assumption becomes `__builtin_assume`, i.e. undefined behaviour (found by
/// tests/fuzz/fuzz_config). Likewise its whitespace test for non-ASCII code points
/// (`is_non_ascii_horizontal_whitespace`) reaches TOML_UNREACHABLE for most code points in
/// U+00A1..U+0499 (`lr = 1é`), so non-ASCII text where toml++ looks for whitespace - outside
/// strings and comments, or after a line-ending backslash - is rejected too. Such text is
/// invalid TOML anyway (keys and whitespace are ASCII), so rejecting it first changes no valid
/// config. And its array parser asserts that an element does not start with a value terminator,
/// which `}` right after `[` or `,` breaks (`x = [}1]`); valid TOML never has that either. The
/// scan tracks comments, strings and brackets so that a `[` starting a line inside a multi-line
/// array or string is not taken for a header.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ampkit::train {

/// Empty when `text` has none of the inputs above that toml++ 3.3 mishandles (a table header not
/// starting with a key, non-ASCII where it looks for whitespace, a `}` where an array element
/// must start); else a message that names the line (1-based), in the style of the TOML syntax
/// errors. (The name predates the last two checks.)
inline std::string toml_table_header_problem(std::string_view text) {
  const auto bare = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  };
  const std::size_t n = text.size();
  bool line_start = true;
  // The last character outside strings, comments and whitespace (across lines). A quote opens a
  // string only where a key or a value can start -- at the start of a line or after one of
  // = [ , { . -- as in toml++, which reads a quote in the middle of a bare token (`84\x01'...`)
  // as part of that token and then tests what follows for non-ASCII whitespace (found by
  // fuzz_config: `randomness.seed=84<bytes>'<bytes>ț...` as a --cfg-options value). And toml++
  // asserts (TOML_ASSERT: abort, or UB under NDEBUG) when a `}` stands where an array element
  // must start, after `[` or `,` (`x = [}32, 64]`, also across lines and comments; fuzz_config).
  char last = 0;
  std::string open;  // the [ / { open now, innermost last (values, and the header being read)
  std::size_t line = 1;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (c == '\n') {
      line_start = true;
      ++line;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (c == '#') {  // comment to the end of the line
      while (i + 1 < n && text[i + 1] != '\n') ++i;
      continue;
    }
    const bool string_may_start =
        line_start || last == '=' || last == '[' || last == ',' || last == '{' || last == '.';
    if ((c == '"' || c == '\'') && string_may_start) {  // basic / literal string, single- or multi-line
      const bool triple = i + 2 < n && text[i + 1] == c && text[i + 2] == c;
      std::size_t j = i + (triple ? 3 : 1);
      for (; j < n; ++j) {
        if (c == '"' && text[j] == '\\') {
          // A line-ending backslash trims the whitespace that follows, and toml++ then tests the
          // next character with the same non-ASCII-whitespace table as below.
          std::size_t k = j + 1;
          while (k < n && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r' || text[k] == '\n')) ++k;
          if (k > j + 1 && k < n && static_cast<unsigned char>(text[k]) >= 0x80)
            return "line " + std::to_string(line) + ": a non-ASCII character after a line-ending backslash";
          ++j;
          if (j < n && text[j] == '\n') ++line;
          continue;
        }
        if (text[j] == '\n') {
          if (!triple) break;  // unterminated single-line string: the parser reports it
          ++line;
        }
        if (text[j] == c && (!triple || (j + 2 < n && text[j + 1] == c && text[j + 2] == c))) {
          if (triple) j += 2;
          break;
        }
      }
      i = j < n && text[j] == '\n' ? j - 1 : j;
      line_start = false;
      last = c;
      continue;
    }
    if (static_cast<unsigned char>(c) >= 0x80)  // see the header comment
      return "line " + std::to_string(line) + ": a non-ASCII character outside a string or comment";
    if (line_start && open.empty() && c == '[') {
      std::size_t j = i + 1;
      bool space = false;
      while (j < n && (text[j] == ' ' || text[j] == '\t')) ++j, space = true;
      bool second = false;  // `[[`: toml++ takes the second bracket only when it follows at once
      if (j < n && text[j] == '[' && !space) {
        ++j;
        second = true;
        while (j < n && (text[j] == ' ' || text[j] == '\t')) ++j;
      }
      // `[ [` is reported by toml++ itself; `[[[` is not (found by tests/fuzz/fuzz_config).
      if (j < n && !bare(text[j]) && text[j] != '"' && text[j] != '\'' && text[j] != ']' &&
          !(text[j] == '[' && !second))
        return "line " + std::to_string(line) + ": a table header must start with a key";
    }
    if (c == '}' && !open.empty() && open.back() == '[' && (last == '[' || last == ','))
      return "line " + std::to_string(line) + ": '}' where an array element is expected";
    line_start = false;
    last = c;
    if (c == '[' || c == '{') open.push_back(c);
    if ((c == ']' || c == '}') && !open.empty()) open.pop_back();
  }
  return {};
}

}  // namespace ampkit::train
