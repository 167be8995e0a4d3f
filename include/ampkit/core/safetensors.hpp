/// @brief Bounds-checked safetensors reader and atomic writer (golden test data, checkpoints).
///
/// The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
/// N, N bytes of JSON `{"name": {"dtype": "F16", "shape": [..], "data_offsets": [b, e]}, ...,
/// "__metadata__": {"k": "v"}}`, then the data buffer; offsets are relative to the buffer.
///
/// Why so many checks: checkpoints come from other machines and other programs (Python writes
/// them too), and a truncated or hostile file must end in one clear ampkit::Error, never in an
/// out-of-bounds read. The reader enforces what the reference implementation enforces: a
/// JSON-object header no larger than 100 MB that fits in the file, unique names, known dtypes,
/// `end - begin == numel * dtype size` computed without overflow, and tensors that tile the
/// buffer exactly (sorted by offset: no overlaps, no holes, nothing left over).
///
/// The writer serialises in memory, writes a temp file next to the target, fsyncs it and renames
/// it over the target, so a crash mid-save leaves either the old file or the new one, never half.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/core/numeric_types.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit::safetensors {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; a big-endian host would need byte swaps");

/// Element types of the format. F8 types can be stored and passed through, not converted.
enum class Dtype {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2
};

namespace detail {
struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  std::size_t size;
};
inline constexpr DtypeEntry kDtypes[] = {
    {Dtype::kBool, "BOOL", 1}, {Dtype::kU8, "U8", 1},          {Dtype::kI8, "I8", 1},
    {Dtype::kI16, "I16", 2},   {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},
    {Dtype::kBF16, "BF16", 2}, {Dtype::kI32, "I32", 4},        {Dtype::kU32, "U32", 4},
    {Dtype::kF32, "F32", 4},   {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},
    {Dtype::kU64, "U64", 8},   {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kF8E5M2, "F8_E5M2", 1},
};
}  // namespace detail

/// Bytes per element.
constexpr std::size_t dtype_size(Dtype d) {
  for (const auto& e : detail::kDtypes)
    if (e.dtype == d) return e.size;
  return 0;
}
/// The format's spelling ("F16", "BF16" ...).
constexpr std::string_view dtype_name(Dtype d) {
  for (const auto& e : detail::kDtypes)
    if (e.dtype == d) return e.name;
  return "?";
}
constexpr std::optional<Dtype> parse_dtype(std::string_view s) {
  for (const auto& e : detail::kDtypes)
    if (e.name == s) return e.dtype;
  return std::nullopt;
}

/// The Dtype of a C++ element type.
template <class T>
inline constexpr Dtype dtype_of_v = [] {
  if constexpr (std::is_same_v<T, float>)
    return Dtype::kF32;
  else if constexpr (std::is_same_v<T, half>)
    return Dtype::kF16;
  else if constexpr (std::is_same_v<T, bfloat16>)
    return Dtype::kBF16;
  else if constexpr (std::is_same_v<T, double>)
    return Dtype::kF64;
  else if constexpr (std::is_same_v<T, bool>)
    return Dtype::kBool;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return Dtype::kU8;
  else if constexpr (std::is_same_v<T, std::int8_t>)
    return Dtype::kI8;
  else if constexpr (std::is_same_v<T, std::int16_t>)
    return Dtype::kI16;
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    return Dtype::kU16;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return Dtype::kI32;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return Dtype::kU32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return Dtype::kI64;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return Dtype::kU64;
  else
    static_assert(sizeof(T) == 0, "safetensors: no dtype for this element type");
}();

/// A header larger than this is rejected before parsing (the reference implementation's limit).
inline constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

/// One tensor's entry in the header.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte range in the data buffer

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;  // cannot overflow: validated when the header was parsed
    return n;
  }
  std::size_t bytes() const { return static_cast<std::size_t>(end - begin); }
};

namespace detail {

inline std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);  // appended, not `"," + to_string`: g++ 12 -O3 -Wrestrict misfires
  }
  r += ']';
  return r;
}

/// numel * size, or nullopt on overflow or a negative/oversized dimension.
inline std::optional<std::uint64_t> checked_bytes(const std::vector<std::int64_t>& shape, std::size_t elem) {
  std::uint64_t n = 1;
  for (auto d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return std::nullopt;
  }
  // numel must also fit an int64 (TensorInfo::numel, Shape).
  if (n > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
  std::uint64_t b = 0;
  if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(elem), &b)) return std::nullopt;
  return b;
}

/// Decode one element of a float-like dtype to double (exact for F16/BF16/F32/F64).
inline double load_float(const std::uint8_t* p, Dtype d) {
  switch (d) {
    case Dtype::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case Dtype::kF64: {
      double f;
      std::memcpy(&f, p, 8);
      return f;
    }
    case Dtype::kF16: {
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      return static_cast<float>(half::from_bits(b));
    }
    case Dtype::kBF16: {
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      return static_cast<float>(bfloat16::from_bits(b));
    }
    default:
      return 0;  // unreachable: callers check is_float first
  }
}

constexpr bool is_float(Dtype d) {
  return d == Dtype::kF32 || d == Dtype::kF64 || d == Dtype::kF16 || d == Dtype::kBF16;
}

}  // namespace detail

/// A safetensors file held in memory, validated on construction.
class File {
 public:
  /// Read and validate a file. Errors name the file and the problem.
  static File load(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    AMPKIT_CHECK(in, "safetensors: cannot open '", path, "': ", std::strerror(errno));
    const std::streamoff size = in.tellg();
    AMPKIT_CHECK(size >= 0, "safetensors: cannot size '", path, "'");
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
    in.seekg(0);
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), size);
    AMPKIT_CHECK(in.good() || (size == 0), "safetensors: short read from '", path, "'");
    return from_bytes(std::move(bytes), path);
  }

  /// Read and validate only the header of a file: names, dtypes, shapes, offsets and metadata,
  /// checked against the file's size (so a truncated file is still rejected), without reading the
  /// tensor data. For listing and choosing checkpoints of hundreds of MB each; raw()/read() on
  /// the result fail with a message.
  static File load_header(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    AMPKIT_CHECK(in, "safetensors: cannot open '", path, "': ", std::strerror(errno));
    const std::streamoff size = in.tellg();
    AMPKIT_CHECK(size >= 0, "safetensors: cannot size '", path, "'");
    File f;
    f.origin_ = path;
    f.header_only_ = true;
    std::uint64_t n = 0;
    if (size >= 8) {
      in.seekg(0);
      in.read(reinterpret_cast<char*>(&n), 8);
      AMPKIT_CHECK(in.good(), "safetensors: short read from '", path, "'");
    }
    // parse() reports a bad length; read the header only when the length is plausible.
    const bool plausible = size >= 8 && n <= kMaxHeaderBytes && n <= static_cast<std::uint64_t>(size) - 8;
    f.bytes_.resize(static_cast<std::size_t>(plausible ? 8 + n : std::min<std::streamoff>(size, 8)));
    in.seekg(0);
    if (!f.bytes_.empty()) in.read(reinterpret_cast<char*>(f.bytes_.data()), static_cast<std::streamsize>(f.bytes_.size()));
    AMPKIT_CHECK(in.good() || f.bytes_.empty(), "safetensors: short read from '", path, "'");
    f.parse(static_cast<std::uint64_t>(size));
    return f;
  }

  /// Validate an in-memory image of a file; `origin` names it in messages.
  static File from_bytes(std::vector<std::uint8_t> bytes, std::string origin = "<memory>") {
    File f;
    f.origin_ = std::move(origin);
    f.bytes_ = std::move(bytes);
    f.parse();
    return f;
  }

  const std::string& origin() const { return origin_; }
  /// Tensor names in data-buffer order.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    for (const auto& t : tensors_) r.push_back(t.name);
    return r;
  }
  std::size_t size() const { return tensors_.size(); }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const TensorInfo& info(std::string_view name) const {
    const TensorInfo* t = find(name);
    AMPKIT_CHECK(t, "safetensors: '", origin_, "' has no tensor '", name, "'");
    return *t;
  }

  /// The raw bytes of a tensor (unaligned: copy out with memcpy, or use read()).
  std::span<const std::uint8_t> raw(std::string_view name) const {
    const auto& t = data_info(name);
    return {bytes_.data() + data_start_ + t.begin, t.bytes()};
  }

  /// Copy a tensor out; its dtype must be exactly T's.
  template <class T>
  std::vector<T> read(std::string_view name) const {
    const auto& t = data_info(name);
    AMPKIT_CHECK(t.dtype == dtype_of_v<T>, "safetensors: '", origin_, "' tensor '", name, "' is ",
                 dtype_name(t.dtype), ", read as ", dtype_name(dtype_of_v<T>));
    std::vector<T> out(static_cast<std::size_t>(t.numel()));
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + data_start_ + t.begin, t.bytes());
    return out;
  }

  /// Copy a floating-point tensor (F16, BF16, F32, F64) out as T, rounding to nearest even.
  /// (F64 -> half/bfloat16 rounds through float: a double rounding, harmless for stored weights.)
  template <class T>
  requires(StorageScalar<T> || std::is_same_v<T, double>) std::vector<T> read_as(std::string_view name)
  const {
    const auto& t = data_info(name);
    AMPKIT_CHECK(detail::is_float(t.dtype), "safetensors: '", origin_, "' tensor '", name, "' is ",
                 dtype_name(t.dtype), ", not a floating-point type");
    const std::size_t es = dtype_size(t.dtype);
    const std::uint8_t* p = bytes_.data() + data_start_ + t.begin;
    std::vector<T> out(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) {
      const double v = detail::load_float(p + i * es, t.dtype);
      if constexpr (std::is_same_v<T, double>)
        out[i] = v;
      else
        out[i] = convert<T>(static_cast<float>(v));
    }
    return out;
  }

  /// A tensor of rank <= 4 as an NHWC HostTensor (leading dimensions filled with 1s), converted
  /// from any floating-point dtype. With `expected`, its shape must match exactly.
  template <StorageScalar T>
  HostTensor<T> tensor(std::string_view name, std::optional<Shape> expected = std::nullopt) const {
    const auto& t = info(name);
    AMPKIT_CHECK(t.shape.size() <= 4, "safetensors: '", origin_, "' tensor '", name, "' has rank ",
                 t.shape.size(), " (shape ", detail::shape_str(t.shape), "); NHWC tensors have rank <= 4");
    std::int64_t d[4] = {1, 1, 1, 1};
    std::copy(t.shape.begin(), t.shape.end(), d + (4 - t.shape.size()));
    const Shape s{d[0], d[1], d[2], d[3]};
    if (expected)
      AMPKIT_CHECK(s == *expected, "safetensors: '", origin_, "' tensor '", name, "' has shape ", s,
                   ", expected ", *expected);
    HostTensor<T> out(s);
    auto v = read_as<T>(name);
    std::copy(v.begin(), v.end(), out.data());
    return out;
  }

 private:
  const TensorInfo& data_info(std::string_view name) const {
    AMPKIT_CHECK(!header_only_, "safetensors: '", origin_, "' was opened with load_header(); tensor '", name,
                 "' needs File::load()");
    return info(name);
  }

  const TensorInfo* find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  template <class... A>
  [[noreturn]] void fail(A&&... a) const {
    throw Error(ampkit::detail::concat("safetensors: '", origin_, "': ", std::forward<A>(a)...));
  }

  /// @param file_size the whole file's size; bytes_ holds all of it, or (header-only) at least
  ///        the 8-byte length and the header
  void parse(std::optional<std::uint64_t> file_size = std::nullopt) {
    using nlohmann::json;
    const std::uint64_t size = file_size.value_or(bytes_.size());
    if (size < 8) fail("file is ", size, " bytes, too short for the 8-byte header length");
    std::uint64_t n = 0;
    std::memcpy(&n, bytes_.data(), 8);
    if (n > kMaxHeaderBytes) fail("header length ", n, " exceeds the ", kMaxHeaderBytes, "-byte limit");
    if (n > size - 8) fail("header length ", n, " runs past the end of the file (", size, " bytes)");
    if (n < 2 || bytes_[8] != '{') fail("header does not start with a JSON object '{'");
    data_start_ = 8 + n;
    const std::uint64_t data_size = size - data_start_;

    // Duplicate names would let two entries alias; nlohmann keeps the last one silently, so
    // watch top-level keys while parsing.
    std::set<std::string> seen;
    std::string duplicate;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      if (depth == 1 && ev == json::parse_event_t::key) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
      }
      return true;
    };
    json header;
    try {
      const char* text = reinterpret_cast<const char*>(bytes_.data() + 8);
      header = json::parse(text, text + n, cb);
    } catch (const json::exception& e) {
      fail("header is not valid JSON: ", e.what());
    }
    if (!duplicate.empty()) fail("tensor name '", duplicate, "' appears twice in the header");
    if (!header.is_object()) fail("header is not a JSON object");

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (v.is_null()) continue;
        if (!v.is_object()) fail("__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("__metadata__ value of '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object()) fail("entry '", name, "' is not an object");
      for (auto f = v.begin(); f != v.end(); ++f)
        if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
          fail("tensor '", name, "' has unknown field '", f.key(), "'");
      TensorInfo t;
      t.name = name;
      const auto dt = v.find("dtype");
      if (dt == v.end() || !dt->is_string()) fail("tensor '", name, "' has no string 'dtype'");
      const auto parsed = parse_dtype(dt->get_ref<const std::string&>());
      if (!parsed) fail("tensor '", name, "' has unsupported dtype '", dt->get<std::string>(), "'");
      t.dtype = *parsed;
      const auto sh = v.find("shape");
      if (sh == v.end() || !sh->is_array()) fail("tensor '", name, "' has no 'shape' array");
      for (const auto& d : *sh) {
        if (!d.is_number_unsigned() || d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
          fail("tensor '", name, "' has a shape entry ", d.dump(), " that is not a non-negative integer");
        t.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
      }
      const auto off = v.find("data_offsets");
      if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
          !(*off)[1].is_number_unsigned())
        fail("tensor '", name, "' needs 'data_offsets' = [begin, end] of non-negative integers");
      t.begin = (*off)[0].get<std::uint64_t>();
      t.end = (*off)[1].get<std::uint64_t>();
      if (t.begin > t.end)
        fail("tensor '", name, "' has data_offsets [", t.begin, ", ", t.end, "] with begin > end");
      if (t.end > data_size)
        fail("tensor '", name, "' has data_offsets [", t.begin, ", ", t.end, "] past the end of the ",
             data_size, "-byte data buffer");
      const auto need = detail::checked_bytes(t.shape, dtype_size(t.dtype));
      if (!need) fail("tensor '", name, "' shape ", detail::shape_str(t.shape), " overflows its byte size");
      if (*need != t.end - t.begin)
        fail("tensor '", name, "' (", dtype_name(t.dtype), " ", detail::shape_str(t.shape), ") needs ", *need,
             " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin);
      tensors_.push_back(std::move(t));
    }

    // The tensors must tile the buffer: sorted by offset, each starts where the last ended. A
    // zero-size tensor (e.g. an optimizer with no state) sits at the offset of the next one: the
    // tie is broken by the end, so it sorts first instead of looking like an overlap.
    std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t expect = 0;
    for (const auto& t : tensors_) {
      if (t.begin < expect)
        fail("tensor '", t.name, "' at [", t.begin, ", ", t.end, "] overlaps the previous tensor (ends at ",
             expect, ")");
      if (t.begin > expect)
        fail("hole in the data buffer: bytes [", expect, ", ", t.begin, ") belong to no tensor (before '",
             t.name, "')");
      expect = t.end;
    }
    if (expect != data_size)
      fail("data buffer is ", data_size, " bytes but the tensors cover ", expect,
           " (trailing bytes or truncation)");
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  std::string origin_;
  std::vector<std::uint8_t> bytes_;
  std::uint64_t data_start_ = 0;
  bool header_only_ = false;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors and writes them as one safetensors file.
class Writer {
 public:
  /// Add raw bytes of a tensor; `bytes.size()` must equal numel * dtype size.
  Writer& add(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
              std::span<const std::uint8_t> bytes) {
    AMPKIT_CHECK(!name.empty() && name != "__metadata__", "safetensors writer: invalid tensor name '", name,
                 "'");
    AMPKIT_CHECK(!names_.contains(name), "safetensors writer: tensor '", name, "' added twice");
    const auto need = detail::checked_bytes(shape, dtype_size(dtype));
    AMPKIT_CHECK(need.has_value(), "safetensors writer: tensor '", name, "' shape ", detail::shape_str(shape),
                 " is negative or overflows");
    AMPKIT_CHECK(*need == bytes.size(), "safetensors writer: tensor '", name, "' (", dtype_name(dtype), " ",
                 detail::shape_str(shape), ") needs ", *need, " bytes, given ", bytes.size());
    names_.insert(name);
    entries_.push_back(
        {std::move(name), dtype, std::move(shape), std::vector<std::uint8_t>(bytes.begin(), bytes.end())});
    return *this;
  }

  /// Add typed data with an explicit shape.
  template <class T>
  Writer& add(std::string name, std::span<const T> data, std::vector<std::int64_t> shape) {
    return add(std::move(name), dtype_of_v<T>, std::move(shape),
               {reinterpret_cast<const std::uint8_t*>(data.data()), data.size_bytes()});
  }

  /// Add an NHWC view (host memory) as a rank-4 tensor.
  template <class T>
  Writer& add(std::string name, TensorView<const T> v) {
    return add<T>(std::move(name), std::span<const T>(v.data, static_cast<std::size_t>(v.numel())),
                  {v.shape.n, v.shape.h, v.shape.w, v.shape.c});
  }

  Writer& metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
    return *this;
  }

  /// The complete file image.
  std::vector<std::uint8_t> serialize() const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t off = 0;
    for (const auto& e : entries_) {
      header[e.name] = {
          {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.data.size()}}};
      off += e.data.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data buffer 8-byte aligned
    std::vector<std::uint8_t> out(8 + text.size() + off);
    const std::uint64_t n = text.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::uint8_t* p = out.data() + 8 + text.size();
    for (const auto& e : entries_) {
      if (!e.data.empty()) std::memcpy(p, e.data.data(), e.data.size());
      p += e.data.size();
    }
    return out;
  }

  /// Write atomically: temp file in the same folder, fsync, rename over `path`.
  void save(const std::string& path) const {
    const auto bytes = serialize();
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    AMPKIT_CHECK(fd >= 0, "safetensors writer: cannot create '", tmp, "': ", std::strerror(errno));
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ::ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        AMPKIT_FAIL("safetensors writer: writing '", tmp, "' failed after ", done, " of ", bytes.size(),
                    " bytes: ", std::strerror(err));
      }
      done += static_cast<std::size_t>(w);
    }
    // fsync before rename: otherwise a crash can leave the new name pointing at empty blocks.
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      AMPKIT_FAIL("safetensors writer: flushing '", tmp, "' failed: ", std::strerror(err));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      AMPKIT_FAIL("safetensors writer: renaming '", tmp, "' to '", path, "' failed: ", std::strerror(err));
    }
    // Persist the rename itself (best effort: some filesystems refuse fsync on a directory).
    auto dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> data;
  };
  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ampkit::safetensors
