/// @brief stb_image_write for ampkit: included in one place (its implementation is compiled static
/// into each translation unit that includes this header, so there is no one-definition problem),
/// and write_png() with ampkit's error convention.
#pragma once

#include <cstdint>
#include <string>

#include "ampkit/core/error.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace ampkit::data {

/// Writes `h` rows of `w` pixels with `channels` interleaved 8-bit channels as a PNG; a failure
/// (missing folder, no permission, full disk) is an ampkit::Error naming the file.
inline void write_png(const std::string& path, int w, int h, int channels, const std::uint8_t* pixels) {
  AMPKIT_CHECK(stbi_write_png(path.c_str(), w, h, channels, pixels, w * channels) != 0, "cannot write '", path,
               "' (does its folder exist and is it writable?)");
}

}  // namespace ampkit::data
