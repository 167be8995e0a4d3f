/// @brief TensorBoard event files (`events.out.tfevents.*`) written without TensorFlow or protobuf:
/// the TFRecord framing with masked CRC32C, and the few Event/Summary protobuf fields scalars need,
/// encoded by hand. Plus a strict reader of the same subset (tests, tools).
///
/// Record (TFRecord): uint64 length (LE) | uint32 masked_crc32c(length bytes) | data |
///                    uint32 masked_crc32c(data); masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8.
/// Event (tensorflow/core/util/event.proto):   1 wall_time double, 2 step int64,
///                                             3 file_version string, 5 summary Summary.
/// Summary (tensorflow/core/framework/summary.proto): repeated 1 value Summary.Value;
///                                             Value: 1 tag string, 2 simple_value float.
/// The first record of a file is the version event "brain.Event:2", as TensorFlow writes it.
///
/// Why flush after every record: a run killed mid-epoch must leave a readable file; a record is
/// written whole by one write() call, and a reader stops at a torn tail (TensorBoard does too).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"

namespace ampkit::train::tfevents {

// ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) --------------------------------------
namespace detail {
inline constexpr std::array<std::uint32_t, 256> kCrcTable = [] {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}();
}  // namespace detail

inline std::uint32_t crc32c(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = detail::kCrcTable[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/// TFRecord's masking: a CRC of data that itself contains CRCs is otherwise weak.
constexpr std::uint32_t mask_crc(std::uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

// ---- protobuf wire format (the subset used) ----------------------------------------------------
namespace detail {
static_assert(std::endian::native == std::endian::little, "tfevents: little-endian hosts only");

inline void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
inline void put_tag(std::string& out, int field, int wire_type) {
  put_varint(out, (static_cast<std::uint64_t>(field) << 3) | static_cast<std::uint64_t>(wire_type));
}
template <class T>
void put_fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
inline void put_bytes(std::string& out, int field, std::string_view s) {
  put_tag(out, field, 2);
  put_varint(out, s.size());
  out.append(s);
}
}  // namespace detail

/// One scalar of an event.
struct ScalarValue {
  std::string tag;
  float value = 0.f;
};

/// The fields of an Event this module writes and reads.
struct Event {
  double wall_time = 0.0;
  std::int64_t step = 0;
  std::string file_version;          ///< only in the first event of a file
  std::vector<ScalarValue> scalars;  ///< summary.value[*] with simple_value
};

/// Protobuf bytes of an Event.
inline std::string encode_event(const Event& e) {
  using namespace detail;
  std::string out;
  put_tag(out, 1, 1);  // wall_time: fixed64 double
  put_fixed(out, e.wall_time);
  if (e.step != 0) {  // proto3 omits defaults
    put_tag(out, 2, 0);
    put_varint(out, static_cast<std::uint64_t>(e.step));  // int64: two's complement varint
  }
  if (!e.file_version.empty()) put_bytes(out, 3, e.file_version);
  if (!e.scalars.empty()) {
    std::string summary;
    for (const auto& s : e.scalars) {
      std::string value;
      put_bytes(value, 1, s.tag);
      put_tag(value, 2, 5);  // simple_value: fixed32 float
      put_fixed(value, s.value);
      put_bytes(summary, 1, value);
    }
    put_bytes(out, 5, summary);
  }
  return out;
}

/// TFRecord framing of one payload.
inline std::string frame_record(std::string_view data) {
  std::string out;
  const std::uint64_t n = data.size();
  detail::put_fixed(out, n);
  detail::put_fixed(out, mask_crc(crc32c(&n, sizeof n)));
  out.append(data);
  detail::put_fixed(out, mask_crc(crc32c(data.data(), data.size())));
  return out;
}

// ---- reader -------------------------------------------------------------------------------------
namespace detail {
struct ProtoReader {
  std::string_view s;
  std::size_t i = 0;
  std::string_view what;

  bool done() const { return i >= s.size(); }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      AMPKIT_CHECK(i < s.size(), "tfevents: truncated varint in ", what);
      const auto b = static_cast<std::uint8_t>(s[i++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    AMPKIT_FAIL("tfevents: varint longer than 10 bytes in ", what);
  }
  template <class T>
  T fixed() {
    AMPKIT_CHECK(i + sizeof(T) <= s.size(), "tfevents: truncated fixed field in ", what);
    T v;
    std::memcpy(&v, s.data() + i, sizeof(T));
    i += sizeof(T);
    return v;
  }
  std::string_view bytes() {
    const std::uint64_t n = varint();
    AMPKIT_CHECK(n <= s.size() - i, "tfevents: length ", n, " runs past the end of ", what);
    auto r = s.substr(i, n);
    i += n;
    return r;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: (void)varint(); break;
      case 1: (void)fixed<std::uint64_t>(); break;
      case 2: (void)bytes(); break;
      case 5: (void)fixed<std::uint32_t>(); break;
      default: AMPKIT_FAIL("tfevents: unsupported wire type ", wire_type, " in ", what);
    }
  }
};
}  // namespace detail

/// Decode an Event's protobuf bytes (fields this module does not write are skipped).
inline Event decode_event(std::string_view bytes) {
  Event e;
  detail::ProtoReader r{bytes, 0, "Event"};
  while (!r.done()) {
    const auto key = r.varint();
    const int field = static_cast<int>(key >> 3), wt = static_cast<int>(key & 7);
    if (field == 1 && wt == 1) e.wall_time = r.fixed<double>();
    else if (field == 2 && wt == 0) e.step = static_cast<std::int64_t>(r.varint());
    else if (field == 3 && wt == 2) e.file_version = std::string(r.bytes());
    else if (field == 5 && wt == 2) {
      detail::ProtoReader sr{r.bytes(), 0, "Summary"};
      while (!sr.done()) {
        const auto sk = sr.varint();
        if ((sk >> 3) != 1 || (sk & 7) != 2) {
          sr.skip(static_cast<int>(sk & 7));
          continue;
        }
        detail::ProtoReader vr{sr.bytes(), 0, "Summary.Value"};
        ScalarValue v;
        bool has_value = false;
        while (!vr.done()) {
          const auto vk = vr.varint();
          if ((vk >> 3) == 1 && (vk & 7) == 2) v.tag = std::string(vr.bytes());
          else if ((vk >> 3) == 2 && (vk & 7) == 5) {
            v.value = vr.fixed<float>();
            has_value = true;
          } else vr.skip(static_cast<int>(vk & 7));
        }
        if (has_value) e.scalars.push_back(std::move(v));
      }
    } else r.skip(wt);
  }
  return e;
}

/// Every record of an event file, CRCs checked. A torn final record (a run killed while
/// writing) ends the list; a CRC mismatch anywhere else is an error naming the offset.
inline std::vector<Event> read_events(const std::string& path, bool* torn_tail = nullptr) {
  std::ifstream in(path, std::ios::binary);
  AMPKIT_CHECK(in, "tfevents: cannot open '", path, "'");
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Event> out;
  std::size_t i = 0;
  if (torn_tail) *torn_tail = false;
  while (i < s.size()) {
    if (s.size() - i < 12) {
      if (torn_tail) *torn_tail = true;
      break;
    }
    std::uint64_t n;
    std::uint32_t len_crc;
    std::memcpy(&n, s.data() + i, 8);
    std::memcpy(&len_crc, s.data() + i + 8, 4);
    AMPKIT_CHECK(len_crc == mask_crc(crc32c(&n, 8)), "tfevents: '", path, "': bad length CRC at byte ", i);
    if (n > s.size() - i - 12 || s.size() - i - 12 - n < 4) {
      if (torn_tail) *torn_tail = true;
      break;
    }
    const std::string_view data(s.data() + i + 12, n);
    std::uint32_t data_crc;
    std::memcpy(&data_crc, s.data() + i + 12 + n, 4);
    AMPKIT_CHECK(data_crc == mask_crc(crc32c(data.data(), data.size())), "tfevents: '", path,
                 "': bad data CRC in the record at byte ", i);
    out.push_back(decode_event(data));
    i += 12 + n + 4;
  }
  return out;
}

// ---- writer -------------------------------------------------------------------------------------
/// Appends scalar events to one file. Not thread-safe (the trainer logs from one thread).
class EventWriter {
 public:
  EventWriter() = default;
  /// Create `dir/events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` and write the version event.
  explicit EventWriter(const std::string& dir, std::string_view suffix = "") {
    char host[256] = "localhost";
    (void)::gethostname(host, sizeof host - 1);
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::system_clock::now().time_since_epoch()).count();
    static int counter = 0;  // two writers in one second in one process still get distinct names
    path_ = dir + "/events.out.tfevents." + std::to_string(now) + "." + host + "." +
            std::to_string(::getpid()) + "." + std::to_string(counter++) + std::string(suffix);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    AMPKIT_CHECK(fd_ >= 0, "tfevents: cannot create '", path_, "': ", std::strerror(errno));
    write_event({wall_time_now(), 0, "brain.Event:2", {}});
  }
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  EventWriter(EventWriter&& o) noexcept : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)) {}
  EventWriter& operator=(EventWriter&& o) noexcept {
    if (this != &o) {
      close();
      path_ = std::move(o.path_);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~EventWriter() { close(); }

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

  /// One event holding several scalars at `step`.
  void add_scalars(std::int64_t step, const std::vector<ScalarValue>& values, double wall_time = wall_time_now()) {
    write_event({wall_time, step, {}, values});
  }
  void add_scalar(std::string tag, float value, std::int64_t step, double wall_time = wall_time_now()) {
    add_scalars(step, {{std::move(tag), value}}, wall_time);
  }

  void write_event(const Event& e) {
    AMPKIT_CHECK(fd_ >= 0, "tfevents: writer is not open");
    const std::string rec = frame_record(encode_event(e));
    std::size_t done = 0;
    while (done < rec.size()) {
      const ::ssize_t w = ::write(fd_, rec.data() + done, rec.size() - done);
      if (w < 0 && errno == EINTR) continue;
      AMPKIT_CHECK(w > 0, "tfevents: writing '", path_, "' failed: ", std::strerror(errno));
      done += static_cast<std::size_t>(w);
    }
  }

  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  static double wall_time_now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace ampkit::train::tfevents
