/// @brief Reading the training configuration: TOML files (with mmengine-style `_base_`
/// inheritance) and validated dotted overrides (`--cfg-options randomness.seed=42`) into the typed
/// schema of config_schema.hpp. toml++ is used header-only; this header is for host code (nvcc
/// cannot compile toml++: CUDA translation units include config_schema.hpp instead).
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#ifndef TOML_HEADER_ONLY
#define TOML_HEADER_ONLY 1
#endif
#ifndef TOML_EXCEPTIONS
#define TOML_EXCEPTIONS 1
#endif
#include <toml++/toml.h>

#include "ampkit/core/error.hpp"
#include "ampkit/train/config_schema.hpp"
#include "ampkit/train/toml_guard.hpp"

namespace ampkit::train {

namespace detail {

inline std::string node_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

inline constexpr toml::format_flags kTomlFlags =
    toml::toml_formatter::default_flags | toml::format_flags::relaxed_float_precision;

/// A value as TOML spells it, with shortest round-trip floats (`0.05`, not `0.050000000000000003`).
inline std::string node_text(const toml::node& n) {
  toml::table t;
  t.insert("v", n);
  std::ostringstream os;
  os << toml::toml_formatter(t, kTomlFlags);
  const std::string s = os.str();
  return s.size() > 4 ? s.substr(4) : s;  // drop "v = "
}

/// Convert a TOML node to T; nullopt when the type does not fit. Integers are accepted where a
/// number is expected (`lr = 1`), never the other way round (a fractional epoch count is a bug).
template <class T>
std::optional<T> from_node(const toml::node& n) {
  if constexpr (std::is_same_v<T, bool>) {
    if (auto v = n.value_exact<bool>()) return *v;
  } else if constexpr (is_int_v<T>) {
    if (auto v = n.value_exact<std::int64_t>()) return static_cast<T>(*v);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (n.is_integer() || n.is_floating_point()) return static_cast<T>(*n.value<double>());
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (auto v = n.value_exact<std::string>()) return *v;
  } else if constexpr (std::is_same_v<T, LossScaleSetting>) {
    if (auto s = n.value_exact<std::string>()) {
      if (*s == "dynamic") return LossScaleSetting{true, 65536.0};
      return std::nullopt;
    }
    if (n.is_integer() || n.is_floating_point()) return LossScaleSetting{false, *n.value<double>()};
  } else {  // arrays
    using E = typename T::value_type;
    const auto* a = n.as_array();
    if (!a) return std::nullopt;
    T out;
    for (const auto& e : *a) {
      auto x = from_node<E>(e);
      if (!x) return std::nullopt;
      out.push_back(*x);
    }
    return out;
  }
  return std::nullopt;
}

/// Flatten a TOML table into dotted keys of its leaves.
inline void flatten(const toml::table& t, const std::string& prefix,
                    std::vector<std::pair<std::string, const toml::node*>>& out) {
  for (const auto& [k, v] : t) {
    const std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const auto* sub = v.as_table()) flatten(*sub, key, out);
    else out.emplace_back(key, &v);
  }
}
}  // namespace detail

/// Set one key from a TOML node. `where` names the origin in messages.
inline void set_config_value(TrainConfig& c, const std::string& key, const toml::node& n, std::string_view where) {
  bool found = false;
  visit_fields(c, [&](std::string_view k, auto& field, std::string_view) {
    if (k != key) return;
    found = true;
    using T = std::remove_cvref_t<decltype(field)>;
    auto v = detail::from_node<T>(n);
    AMPKIT_CHECK(v.has_value(), where, ": '", key, "' expects ", detail::type_name<T>(), ", given ",
                 detail::node_type_name(n), " (", detail::node_text(n), ")");
    field = std::move(*v);
  });
  if (!found) throw Error(detail::unknown_key_message(key, where));
}

/// Apply `key=value` overrides. The value is read as a TOML value (`0.5`, `[90, 120]`, `true`,
/// `"text"`); a value that is not valid TOML is taken as a bare string (`data.data_root=/x/`).
inline void apply_overrides(LoadedConfig& lc, const std::vector<std::string>& overrides) {
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    AMPKIT_CHECK(eq != std::string::npos && eq > 0, "--cfg-options: '", o, "' is not key=value");
    std::string key = o.substr(0, eq);
    const std::string value = o.substr(eq + 1);
    toml::table parsed;
    // toml_table_header_problem: a value with a newline could smuggle in a header toml++
    // mishandles (see toml_guard.hpp); such a value is not TOML, so it is read as a bare string.
    bool ok = toml_table_header_problem("v = " + value).empty();
    if (ok) try {
      parsed = toml::parse("v = " + value);
    } catch (const toml::parse_error&) {
      ok = false;
    }
    toml::value<std::string> bare(value);
    const toml::node& node = ok ? *parsed.get("v") : static_cast<const toml::node&>(bare);
    set_config_value(lc.config, key, node, "--cfg-options");
    lc.from_overrides.insert(key);
  }
}

namespace detail {
inline std::string read_text_file(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  AMPKIT_CHECK(in, what, ": cannot open '", path, "'",
               std::filesystem::exists(path) ? " (permission denied?)" : " (no such file)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void parse_into(LoadedConfig& lc, std::string_view text, const std::string& origin, int depth) {
  AMPKIT_CHECK(depth < 8, origin, ": _base_ chain deeper than 8 files (a cycle?)");
  if (const auto bad = toml_table_header_problem(text); !bad.empty())
    AMPKIT_FAIL(origin, ": TOML syntax error: ", bad);
  toml::table t;
  try {
    t = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    AMPKIT_FAIL(origin, ":", b.line, ":", b.column, ": TOML syntax error: ", e.description());
  }
  // `_base_ = "other.toml"` (mmengine's inheritance): the base is read first, relative to this
  // file, and this file's keys override it.
  if (const auto* base = t.get("_base_")) {
    const auto name = base->value_exact<std::string>();
    AMPKIT_CHECK(name.has_value(), origin, ": _base_ must be a file name string");
    std::filesystem::path p(*name);
    if (p.is_relative()) p = std::filesystem::path(origin).parent_path() / p;
    parse_into(lc, read_text_file(p.string(), origin + ": _base_"), p.lexically_normal().string(), depth + 1);
    t.erase("_base_");
  }
  std::vector<std::pair<std::string, const toml::node*>> leaves;
  flatten(t, "", leaves);
  for (const auto& [key, node] : leaves) {
    const std::string where = origin + ":" + std::to_string(node->source().begin.line);
    set_config_value(lc.config, key, *node, where);
    lc.from_file.insert(key);
  }
}
}  // namespace detail

/// Parse TOML text (`origin` names it in messages and anchors relative `_base_` paths).
inline LoadedConfig parse_config(std::string_view text, std::string origin) {
  LoadedConfig lc;
  lc.source = origin;
  detail::parse_into(lc, text, origin, 0);
  return lc;
}

/// Read a TOML config file, apply the overrides, validate.
inline LoadedConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {}) {
  LoadedConfig lc = parse_config(detail::read_text_file(path, "config"), path);
  apply_overrides(lc, overrides);
  // A value that fails validation may come from the file or from --cfg-options: name both, so a
  // bad override is not blamed on the file.
  std::string where = path;
  if (!overrides.empty()) {
    where += " with --cfg-options";
    for (const auto& o : overrides) where += " " + o;
  }
  validate(lc.config, where);
  return lc;
}

}  // namespace ampkit::train
