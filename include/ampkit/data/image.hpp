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
#include <cstring>
#include <string>
#include <vector>

#include "ampkit/core/error.hpp"

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
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_NO_PIC
#define STBI_NO_PNM
#define STBI_NO_PSD
#define STBI_NO_TGA
#define STBI_NO_GIF
#include <stb_image.h>
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

/// Decode an encoded image held in memory into RGB (grayscale is replicated to 3 channels), into
/// `img` (its buffer is reused when large enough). `name` is used in error messages.
inline void decode_image_into(const std::uint8_t* data, std::size_t n, const std::string& name,
                              Image& img) {
  AMPKIT_CHECK(n > 0, "image '", name, "': the file is empty");
  AMPKIT_CHECK(n < (std::size_t{1} << 31), "image '", name, "': file too large (", n, " bytes)");
  if (n >= 2 && data[0] == 0xFF && data[1] == 0xD8) {
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
  }
  int w = 0, h = 0, c = 0;
  stbi_uc* p = stbi_load_from_memory(data, static_cast<int>(n), &w, &h, &c, 3);
  if (p == nullptr)
    AMPKIT_FAIL("image '", name, "': cannot decode (", stbi_failure_reason(),
                "); the file is corrupt, truncated or not a JPEG/PNG/BMP");
  img.h = h, img.w = w, img.c = 3;
  img.pixels.resize(static_cast<std::size_t>(h) * w * 3);
  std::memcpy(img.pixels.data(), p, img.pixels.size());
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
