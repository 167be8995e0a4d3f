/// @brief Image decoding (JPEG, PNG, ...) with stb_image into 8-bit RGB, with errors that name the
/// file and the problem.
///
/// stb_image is compiled into every translation unit that includes this header with static
/// linkage (STB_IMAGE_STATIC), so a header-only library can use it without an ODR clash. Pixels
/// may differ from OpenCV/libjpeg-turbo's decoder by a level or two on JPEGs (different IDCT and
/// chroma upsampling); PNGs are exact.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"

/// AMPKIT_STB_BLOCK_CACHE: stb_image allocates through detail::StbBlockCache (1, the default) or
/// straight through malloc (0). Off under AddressSanitizer/MemorySanitizer, so that the fuzz and
/// sanitizer builds see every stb buffer at its exact size, fresh from malloc (a cached, rounded
/// up block would hide an overflow or a read of stale data inside it).
#ifndef AMPKIT_STB_BLOCK_CACHE
#if defined(__SANITIZE_ADDRESS__)
#define AMPKIT_STB_BLOCK_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define AMPKIT_STB_BLOCK_CACHE 0
#endif
#endif
#endif
#ifndef AMPKIT_STB_BLOCK_CACHE
#define AMPKIT_STB_BLOCK_CACHE 1
#endif

namespace ampkit::data::detail {

/// A per-thread cache of the large blocks stb_image allocates while it decodes (the RGB output,
/// one full-size plane per JPEG component, a progressive JPEG's coefficients: 4-7 blocks of
/// 0.1-1.2 MB for a COCO image), so that a data worker decoding image after image reuses them
/// instead of asking malloc for fresh ones each time.
///
/// Why: with glibc's default, self-adjusting mmap threshold these blocks happen to be recycled
/// from the thread's arena, but whenever that threshold is fixed (mallopt, MALLOC_MMAP_THRESHOLD_,
/// another allocator's policy) each block is a fresh mmap whose pages the kernel zero-fills on
/// first touch: measured 422 page faults and ~10% more CPU per 512x512 training sample, one
/// thread, MALLOC_MMAP_THRESHOLD_=131072 (bench/results/data_pipeline.md). Blocks below
/// kMinCached go straight to malloc (its per-thread caches serve them well); the cache keeps at
/// most kMaxBlocks blocks and kMaxCachedBytes per thread, so an occasional huge image does not
/// pin its buffers for the rest of the run.
class StbBlockCache {
 public:
  static constexpr std::size_t kMinCached = std::size_t{64} << 10;
  static constexpr std::size_t kMaxCachedBytes = std::size_t{32} << 20;
  static constexpr int kMaxBlocks = 8;

  StbBlockCache() = default;
  StbBlockCache(const StbBlockCache&) = delete;
  StbBlockCache& operator=(const StbBlockCache&) = delete;
  ~StbBlockCache() {
    for (int i = 0; i < n_free_; ++i) std::free(free_[i]);
  }

  void* allocate(std::size_t n) {
    if (n >= kMinCached) {
      int best = -1;  // the smallest cached block that fits
      for (int i = 0; i < n_free_; ++i)
        if (capacity(free_[i]) >= n && (best < 0 || capacity(free_[i]) < capacity(free_[best])))
          best = i;
      if (best >= 0) {
        void* base = free_[best];
        cached_bytes_ -= capacity(base);
        free_[best] = free_[--n_free_];
        return static_cast<char*>(base) + kHeader;
      }
      // Round up so that the next, slightly larger image of a similar size still fits.
      n = (n + kMinCached - 1) / kMinCached * kMinCached;
      ++n_block_allocations_;
    }
    void* base = std::malloc(n + kHeader);
    if (base == nullptr) return nullptr;
    std::memcpy(base, &n, sizeof n);
    return static_cast<char*>(base) + kHeader;
  }

  void deallocate(void* p) {
    if (p == nullptr) return;
    void* base = static_cast<char*>(p) - kHeader;
    const std::size_t cap = capacity(base);
    if (cap < kMinCached || cap > kMaxCachedBytes) {
      std::free(base);
      return;
    }
    // Full: make room by dropping smaller blocks (larger ones serve more requests).
    while (n_free_ > 0 && (n_free_ == kMaxBlocks || cached_bytes_ + cap > kMaxCachedBytes)) {
      int smallest = 0;
      for (int i = 1; i < n_free_; ++i)
        if (capacity(free_[i]) < capacity(free_[smallest])) smallest = i;
      if (capacity(free_[smallest]) >= cap) {
        std::free(base);
        return;
      }
      cached_bytes_ -= capacity(free_[smallest]);
      std::free(free_[smallest]);
      free_[smallest] = free_[--n_free_];
    }
    free_[n_free_++] = base;
    cached_bytes_ += cap;
  }

  void* reallocate(void* p, std::size_t n) {
    if (p == nullptr) return allocate(n);
    const std::size_t cap = capacity(static_cast<char*>(p) - kHeader);
    if (n <= cap) return p;
    void* q = allocate(n);
    if (q == nullptr) return nullptr;  // realloc semantics: p stays valid
    std::memcpy(q, p, cap);
    deallocate(p);
    return q;
  }

  /// Large blocks (kMinCached or more) this cache had to get from malloc so far, i.e. the
  /// requests it could not serve from its blocks (for tests and benchmarks).
  std::int64_t n_block_allocations() const { return n_block_allocations_; }

 private:
  // The block's capacity sits in front of it; 16 bytes keep malloc's alignment for the caller.
  static constexpr std::size_t kHeader = 16;
  static std::size_t capacity(const void* base) {
    std::size_t c;
    std::memcpy(&c, base, sizeof c);
    return c;
  }

  void* free_[kMaxBlocks] = {};
  int n_free_ = 0;
  std::size_t cached_bytes_ = 0;
  std::int64_t n_block_allocations_ = 0;
};

/// The calling thread's cache (what stb_image's STBI_MALLOC/STBI_REALLOC/STBI_FREE use).
inline StbBlockCache& stb_block_cache() {
  thread_local StbBlockCache cache;
  return cache;
}
inline void* stb_malloc(std::size_t n) { return stb_block_cache().allocate(n); }
inline void* stb_realloc(void* p, std::size_t n) { return stb_block_cache().reallocate(p, n); }
inline void stb_free(void* p) { stb_block_cache().deallocate(p); }

}  // namespace ampkit::data::detail

#ifndef AMPKIT_STB_IMAGE_INCLUDED
#define AMPKIT_STB_IMAGE_INCLUDED
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#if AMPKIT_STB_BLOCK_CACHE
#define STBI_MALLOC(n) ::ampkit::data::detail::stb_malloc(n)
#define STBI_REALLOC(p, n) ::ampkit::data::detail::stb_realloc(p, n)
#define STBI_FREE(p) ::ampkit::data::detail::stb_free(p)
#endif
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_NO_PIC
#define STBI_NO_PNM
#define STBI_NO_PSD
#define STBI_NO_TGA
#define STBI_NO_GIF
// stb_image 2.27 (Debian's libstb): when a marker ends a corrupt scan early, the AC loop's
// fast path can consume more bits than were buffered, code_bits goes negative, and the next
// stbi__grow_buffer_unsafe shifts the zero byte it then reads by 24 - code_bits = 32 bits (UB, found
// by fuzz_image: tests/fuzz/regressions/image/ac_scan_past_marker_shift_32.jpg). The shifted value
// is 0 whatever the count, so nothing is decoded differently. And a PNG whose first IDAT chunk is
// empty (legal) makes stbi__getn call memcpy(NULL, src, 0) before any image data was allocated
// (tests/fuzz/regressions/image/png_empty_first_idat.png): UB by memcpy's nonnull declaration,
// copying nothing. clang's UBSan is told to skip exactly those two checks (shift-exponent,
// nonnull-attribute) in stb's functions only -- AddressSanitizer and every other check still cover
// them, and ampkit's own code keeps both checks.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((no_sanitize("shift-exponent", "nonnull-attribute"))), apply_to = function)
#endif
#include <stb_image.h>
#if defined(__clang__)
#pragma clang attribute pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

namespace ampkit::data {

/// An 8-bit image, row-major (H,W,C), interleaved channels.
struct Image {
  int h = 0, w = 0, c = 0;
  std::vector<std::uint8_t> pixels;

  Image() = default;
  Image(int h_, int w_, int c_)
      : h(h_), w(w_), c(c_), pixels(static_cast<std::size_t>(h_) * w_ * c_, 0) {}
  std::uint8_t* row(int y) { return pixels.data() + static_cast<std::size_t>(y) * w * c; }
  const std::uint8_t* row(int y) const { return pixels.data() + static_cast<std::size_t>(y) * w * c; }
};

/// The most pixels decode_image accepts (8192 x 8192): far above any training image, low enough
/// that a corrupt header cannot make one decode take gigabytes.
inline constexpr std::int64_t kMaxImagePixels = std::int64_t{1} << 26;

namespace detail {
/// Walk the JPEG markers (skipping segment payloads and entropy-coded data) and reject what
/// stb_image 2.27 (Debian 12's) turns into memory errors instead of a decode error, both found
/// by tests/fuzz/fuzz_image:
///   - a Huffman table (DHT) declaring more than 256 symbols: stb builds the table before checking
///     the count and writes past its 257-entry size array (fixed upstream in 2.28);
///   - a scan (SOS) that selects a Huffman table no DHT has defined before it: stb decodes with
///     the uninitialised table (its decoder state is malloc'ed, not zeroed) and indexes its
///     arrays with garbage. DC tables are needed by scans that start at coefficient 0, AC tables
///     by scans that reach past it (so valid progressive JPEGs, whose DC-only scans name an AC
///     table they never use, still decode).
/// A valid JPEG has neither, so this only turns memory corruption into an error.
inline void check_jpeg_huffman_tables(const std::uint8_t* d, std::size_t n, const std::string& name,
                                      std::size_t start) {
  std::size_t i = start;  // just past the SOI marker
  bool defined[2][4] = {};  // [class: 0 DC, 1 AC][table id] seen in a DHT so far
  while (i + 4 <= n) {
    if (d[i] != 0xFF) {  // entropy-coded data: markers are the only FFxx not followed by 00
      // Skip to the next FF byte (memchr: the scan covers the whole entropy-coded data).
      const void* ff = std::memchr(d + i, 0xFF, n - 3 - i);
      if (ff == nullptr) return;
      i = static_cast<std::size_t>(static_cast<const std::uint8_t*>(ff) - d);
      continue;
    }
    const std::uint8_t m = d[i + 1];
    if (m == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {  // stuffing, TEM, RSTn: no length
      i += 2;
      continue;
    }
    if (m == 0xD9) return;  // EOI
    const std::size_t len = (std::size_t{d[i + 2]} << 8) | d[i + 3];
    if (m == 0xC4) {
      // Tables follow each other while the segment lasts: class/id byte, 16 counts, symbols.
      for (std::size_t p = i + 4; p < i + 2 + len && p < n;) {
        std::size_t symbols = 0;
        for (std::size_t j = p + 1; j < p + 17 && j < n; ++j) symbols += d[j];
        AMPKIT_CHECK(symbols <= 256, "image '", name, "': corrupt JPEG (a Huffman table declares ", symbols,
                     " symbols, at most 256 exist)");
        const int tc = d[p] >> 4, th = d[p] & 15;
        if (tc <= 1 && th <= 3) defined[tc][th] = true;  // other ids: stb rejects the table itself
        p += 17 + symbols;
      }
    }
    if (m == 0xDA && i + 5 <= n) {
      // SOS: Ns, then (component id, DC/AC table ids) per component, then Ss, Se, Ah/Al.
      const std::size_t ns = d[i + 4];
      const std::size_t tail = i + 5 + 2 * ns;
      if (tail + 1 < n && tail + 1 < i + 2 + len) {
        const int ss = d[tail], se = d[tail + 1];
        // A DC refinement scan (Ss = 0, Ah != 0) reads raw bits, no DC table.
        const bool dc_decoded = ss == 0 && (tail + 2 >= n || (d[tail + 2] >> 4) == 0);
        for (std::size_t c = 0; c < ns; ++c) {
          const int td = d[i + 6 + 2 * c] >> 4, ta = d[i + 6 + 2 * c] & 15;
          AMPKIT_CHECK(!dc_decoded || (td <= 3 && defined[0][td]), "image '", name,
                       "': corrupt JPEG (a scan uses DC Huffman table ", td, ", which no DHT segment defines)");
          AMPKIT_CHECK(se == 0 || (ta <= 3 && defined[1][ta]), "image '", name,
                       "': corrupt JPEG (a scan uses AC Huffman table ", ta, ", which no DHT segment defines)");
        }
      }
    }
    i += 2 + len;
  }
}

/// Walk a PNG's chunks (length, type, data, CRC) up to IEND and reject a chunk whose declared
/// length runs past the end of the file. stb_image 2.27 grows its IDAT buffer to the declared
/// length before it reads the data, so a 636-byte PNG declaring a 1.5 GB IDAT chunk made it
/// allocate 2 GiB (found by fuzz_image: out of memory); in a valid file every chunk is complete.
inline void check_png_chunk_lengths(const std::uint8_t* d, std::size_t n, const std::string& name) {
  std::size_t p = 8;  // past the signature
  while (p + 8 <= n) {
    const std::uint32_t len = (std::uint32_t{d[p]} << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3];
    const char type[5] = {char(d[p + 4]), char(d[p + 5]), char(d[p + 6]), char(d[p + 7]), 0};
    AMPKIT_CHECK(std::uint64_t{len} + 8 <= n - p, "image '", name, "': truncated or corrupt PNG (chunk '", type,
                 "' at byte ", p, " declares ", len, " bytes of data, but the file ends ", n - p - 8,
                 " bytes after the chunk's header)");
    if (std::memcmp(type, "IEND", 4) == 0) return;
    p += std::size_t{len} + 12;
  }
}

/// Reject a JPEG or BMP too small to hold the pixels its header declares. stb_image reads zeros
/// past the end of the data for both (JPEG: once a marker or the end stops the scan), so such a
/// file decodes "successfully" into a mostly black or grey picture -- wrong training data -- and
/// costs as much as a real image of that size: a 54-byte BMP declaring 8192x8192 took 8 s under
/// AddressSanitizer and timed out CI's fuzz run on a slower machine. The bounds are lower
/// bounds on what a valid file holds, so no valid file is rejected:
///   - BMP (uncompressed; stb rejects RLE): every row stores ceil(w * bpp / 8) bytes of pixels;
///   - JPEG (Huffman-coded; stb has no arithmetic coding): the full-resolution component has
///     ceil(w/8) * ceil(h/8) blocks and every block costs at least one bit (its DC code, the
///     shortest Huffman code being one bit long) in the first scan that codes it.
/// PNG needs no such bound: stb inflates only the data that is there and rejects a short stream
/// ("not enough pixels"), so the cost is bounded by deflate's ratio (at most 1032:1); its chunk
/// lengths are checked by check_png_chunk_lengths.
/// w, h: the magnitudes of what stb's info reports, already within kMaxImagePixels together, so
/// w * bpp * h cannot overflow (an earlier version multiplied a negative height: found by
/// fuzz_image, tests/fuzz/regressions/image/bmp_negative_height_bpp_overflow.bmp).
inline void check_size_fits_file(const std::uint8_t* d, std::size_t n, bool jpeg, std::int64_t w, std::int64_t h,
                                 const std::string& name) {
  if (w <= 0 || h <= 0) return;  // the 0x0 check after decoding names it
  if (jpeg) {
    const std::int64_t blocks = (w + 7) / 8 * ((h + 7) / 8);
    const std::int64_t need = (blocks + 7) / 8;
    AMPKIT_CHECK(static_cast<std::int64_t>(n) >= need, "image '", name, "': corrupt or truncated JPEG (the header says ",
                 w, "x", h, " pixels, which takes at least ", need, " bytes of coded data; the file is ", n,
                 " bytes)");
    return;
  }
  if (n < 30 || d[0] != 'B' || d[1] != 'M') return;
  const std::uint32_t dib = d[14] | (d[15] << 8) | (d[16] << 16) | (std::uint32_t{d[17]} << 24);
  const int bpp = dib == 12 ? (d[24] | (d[25] << 8)) : (d[28] | (d[29] << 8));  // OS/2 core header: 16-bit fields
  if (bpp <= 0) return;  // stb rejects it itself
  const std::int64_t row = (w * bpp + 7) / 8;
  const std::int64_t need = row * h;
  AMPKIT_CHECK(static_cast<std::int64_t>(n) >= need, "image '", name, "': truncated BMP (the header says ", w, "x", h,
               " pixels at ", bpp, " bits each, ", need, " bytes of pixels; the file is ", n, " bytes)");
}
}  // namespace detail

/// Decode an encoded image held in memory into RGB (grayscale is replicated to 3 channels), into
/// `img` (its buffer is reused when large enough). `name` is used in error messages.
inline void decode_image_into(const std::uint8_t* data, std::size_t n, const std::string& name,
                              Image& img) {
  AMPKIT_CHECK(n > 0, "image '", name, "': the file is empty");
  AMPKIT_CHECK(n < (std::size_t{1} << 31), "image '", name, "': file too large (", n, " bytes)");
  // A JPEG starts with FF D8; stb_image also skips extra FF fill bytes before the D8 (found by
  // tests/fuzz/fuzz_image: FF FF D8 went around the checks below).
  std::size_t soi = 1;
  while (soi < n && data[soi] == 0xFF) ++soi;
  const bool jpeg = n >= 2 && data[0] == 0xFF && soi < n && data[soi] == 0xD8;
  if (jpeg) {
    // stb_image decodes a JPEG cut short without complaint (the missing part comes out grey);
    // libjpeg calls it "premature end of JPEG file". Require the end-of-image marker, allowing
    // for padding after it.
    std::size_t end = n;
    while (end > 2 && (data[end - 1] == 0 || data[end - 1] == '\n' || data[end - 1] == '\r' ||
                       data[end - 1] == ' '))
      --end;
    bool eoi = false;
    for (std::size_t i = end; i-- > 2 && i + 64 >= end;)
      if (data[i - 1] == 0xFF && data[i] == 0xD9) eoi = true;
    AMPKIT_CHECK(eoi, "image '", name, "': truncated JPEG (no end-of-image marker in the last ",
                 "bytes; the file is ", n, " bytes)");
    detail::check_jpeg_huffman_tables(data, n, name, soi + 1);
  }
  static constexpr std::uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (n >= 8 && std::memcmp(data, kPngSignature, 8) == 0) detail::check_png_chunk_lengths(data, n, name);
  int w = 0, h = 0, c = 0;
  // Hardening: stb decodes whatever size the header claims and reads zeros past the end of the
  // data, so a 200-byte BMP or JPEG claiming 10 x 16M pixels costs seconds and gigabytes (found
  // by tests/fuzz/fuzz_image). Check the header's size first.
  if (stbi_info_from_memory(data, static_cast<int>(n), &w, &h, &c)) {
    // stb's info passes a BMP's height through with its sign (negative: a top-down image) and
    // decodes |height| rows, so the checks use magnitudes (a 130-byte BMP declaring 3082 x -37381
    // pixels went around the cap and timed out fuzz_image).
    const std::int64_t aw = std::llabs(w), ah = std::llabs(h);
    AMPKIT_CHECK(aw * ah <= kMaxImagePixels, "image '", name, "': ", aw, "x", ah, " pixels is more than the ",
                 kMaxImagePixels, " ampkit decodes (corrupt header?)");
    detail::check_size_fits_file(data, n, jpeg, aw, ah, name);
  }
  // JPEGs are decoded to RGBA and compacted here: stb converts YCbCr to RGB with SSE2 only for
  // 4-byte output pixels (its 3-byte loop is scalar, ~0.5 ms of a 640x480 decode). The two
  // conversions give the same bytes: the SIMD one computes floor((floor(c·k/256) + 16 y + 8) / 16)
  // where the scalar one computes floor((c·k/256 + 16 y + 8) / 16), equal because the other
  // terms are integers (and its green truncates the Cb term to floor(Cb·k/256) as the scalar
  // code's & 0xffff0000 does); chroma upsampling and IDCT do not depend on the output channels.
  // tests/unit/data pins RGBA-compacted == stb's own RGB on JPEGs of every kind it meets.
  const int comps = jpeg ? 4 : 3;
  stbi_uc* p = stbi_load_from_memory(data, static_cast<int>(n), &w, &h, &c, comps);
  if (p == nullptr)
    AMPKIT_FAIL("image '", name, "': cannot decode (", stbi_failure_reason(),
                "); the file is corrupt, truncated or not a JPEG/PNG/BMP");
  if (w <= 0 || h <= 0) {  // stb accepts a 0x0 BMP (found by tests/fuzz/fuzz_image)
    stbi_image_free(p);
    AMPKIT_FAIL("image '", name, "': the header says ", w, "x", h, " pixels; the file is corrupt");
  }
  img.h = h, img.w = w, img.c = 3;
  const std::size_t n_pixels = static_cast<std::size_t>(h) * w;
  img.pixels.resize(n_pixels * 3);
  if (comps == 3) {
    std::memcpy(img.pixels.data(), p, img.pixels.size());
  } else {  // RGBA -> RGB: 4 bytes stored per pixel, 3 advanced (the last pixel byte by byte)
    std::uint8_t* d = img.pixels.data();
    for (std::size_t i = 0; i + 1 < n_pixels; ++i) std::memcpy(d + 3 * i, p + 4 * i, 4);
    std::memcpy(d + 3 * (n_pixels - 1), p + 4 * (n_pixels - 1), 3);
  }
  stbi_image_free(p);
}

inline Image decode_image(const std::uint8_t* data, std::size_t n, const std::string& name) {
  Image img;
  decode_image_into(data, n, name, img);
  return img;
}

/// Read a whole file into `bytes` (reused). Errors name the file.
inline void read_file_into(const std::string& path, std::vector<std::uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  AMPKIT_CHECK(f != nullptr, "image '", path, "': cannot open (", std::strerror(errno), ")");
  // One read of the size the file has now (then read on in case it grew).
  long size = -1;
  if (std::fseek(f, 0, SEEK_END) == 0) size = std::ftell(f);
  std::rewind(f);
  bytes.resize(size > 0 ? static_cast<std::size_t>(size) : 0);
  std::size_t got = bytes.empty() ? 0 : std::fread(bytes.data(), 1, bytes.size(), f);
  bytes.resize(got);
  std::uint8_t buf[1 << 12];
  for (std::size_t r; (r = std::fread(buf, 1, sizeof buf, f)) > 0;) bytes.insert(bytes.end(), buf, buf + r);
  const bool err = std::ferror(f);
  std::fclose(f);
  AMPKIT_CHECK(!err, "image '", path, "': read error");
}

/// Read and decode an image file into RGB, reusing `bytes` and `img`.
inline void load_image_into(const std::string& path, std::vector<std::uint8_t>& bytes, Image& img) {
  read_file_into(path, bytes);
  decode_image_into(bytes.data(), bytes.size(), path, img);
}

/// Read and decode an image file into RGB.
inline Image load_image(const std::string& path) {
  std::vector<std::uint8_t> bytes;
  Image img;
  load_image_into(path, bytes, img);
  return img;
}

}  // namespace ampkit::data
