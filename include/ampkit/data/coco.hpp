/// @brief COCO person-keypoints annotations, read with a streaming (SAX) JSON parser and organised
/// bottom-up (one entry per image, as mmpose's BaseCocoStyleDataset does with data_mode='bottomup').
///
/// Why SAX: train2017's person_keypoints file is ~240 MB; a DOM (nlohmann::json) of it takes
/// several GB and tens of seconds. Streaming it in 1 MiB chunks keeps memory to what we keep:
/// the keypoints of valid persons and the segmentations of the ones that become ignore regions.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ampkit/core/error.hpp"
#include "ampkit/data/mask.hpp"

namespace ampkit::data {

inline constexpr int kCocoKeypoints = 17;

/// One person annotation. Keypoints are (x, y, v) in image pixels, v = 0 unlabelled,
/// 1 labelled but occluded, 2 visible.
struct CocoPerson {
  std::int64_t id = 0;
  std::array<float, 3 * kCocoKeypoints> keypoints{};
  std::array<float, 4> bbox{};  // x, y, w, h as in the file
  int num_keypoints = 0;
};

/// One image with its valid persons and the segmentations that become the ignore mask.
struct CocoImage {
  std::int64_t id = 0;
  std::string file_name;
  int width = 0, height = 0;
  std::vector<CocoPerson> persons;
  /// Segments of crowd, unlabelled (num_keypoints == 0 or all-zero keypoints) and degenerate
  /// (empty clipped box) persons: BottomupGetHeatmapMask's "invalid_segs".
  std::vector<Segmentation> ignore_segs;
};

/// What the loader saw and skipped. Problems are per annotation and do not stop a load unless
/// CocoLoadOptions::strict is set; the first few are kept as messages.
struct CocoLoadReport {
  std::int64_t n_images = 0, n_annotations = 0, n_valid_persons = 0, n_crowd = 0,
               n_no_keypoints = 0, n_degenerate_box = 0, n_other_category = 0,
               n_unknown_image = 0, n_bad_annotation = 0, n_images_kept = 0;
  std::vector<std::string> problems;  // first few, each naming the file and the annotation id
};

struct CocoLoadOptions {
  /// Throw on the first problem instead of skipping and counting it.
  bool strict = false;
  /// Read buffer size; the parser never holds more of the file than this.
  std::size_t chunk_bytes = std::size_t{1} << 20;
  std::size_t max_problem_messages = 20;
};

namespace detail {

/// Reads a file in fixed-size chunks and presents it to nlohmann's parser as a char input
/// iterator. The iterator carries the current chunk's pointers itself so that the per-character
/// step inlines to a compare and an increment; only the parser's one working copy advances.
class ChunkReader {
 public:
  ChunkReader(const std::string& path, std::size_t chunk) : path_(path), buf_(chunk) {
    file_ = std::fopen(path.c_str(), "rb");
    AMPKIT_CHECK(file_ != nullptr, "COCO annotations: cannot open '", path, "'");
  }
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;
  ~ChunkReader() {
    if (file_) std::fclose(file_);
  }

  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = char;
    using difference_type = std::ptrdiff_t;
    using pointer = const char*;
    using reference = char;
    Iterator() = default;  // the end
    explicit Iterator(ChunkReader* r) : r_(r) { r_->refill(p_, e_); }
    char operator*() const { return *p_; }
    Iterator& operator++() {
      if (++p_ == e_) [[unlikely]]
        r_->refill(p_, e_);
      return *this;
    }
    Iterator operator++(int) {
      Iterator t = *this;
      ++*this;
      return t;
    }
    bool operator==(const Iterator& o) const { return (p_ == e_) == (o.p_ == o.e_); }
    bool operator!=(const Iterator& o) const { return !(*this == o); }

   private:
    ChunkReader* r_ = nullptr;
    const char* p_ = nullptr;
    const char* e_ = nullptr;
  };

 private:
  void refill(const char*& p, const char*& e) {
    const std::size_t n = std::fread(buf_.data(), 1, buf_.size(), file_);
    AMPKIT_CHECK(n > 0 || !std::ferror(file_), "COCO annotations: read error in '", path_, "'");
    p = buf_.data();
    e = p + n;
  }
  std::string path_;
  std::FILE* file_ = nullptr;
  std::vector<char> buf_;
};

/// SAX handler: a small state machine over the parts of the COCO layout we keep. Everything else
/// (info, licenses, categories, area, caption fields...) is skipped without being stored.
class CocoSax {
 public:
  using json = nlohmann::json;
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  /// A raw annotation before we know its image (files may list annotations first).
  struct RawAnnotation {
    std::int64_t id = -1, image_id = -1, category_id = 1;
    int iscrowd = 0, num_keypoints = -1;
    std::vector<float> keypoints, bbox;
    bool has_seg = false;
    Segmentation seg;
  };
  struct RawImage {
    std::int64_t id = -1;
    std::string file_name;
    int width = -1, height = -1;
  };

  explicit CocoSax(std::string path) : path_(std::move(path)) {}

  std::vector<RawImage> images;
  /// Called for every finished annotation.
  std::function<void(RawAnnotation&&)> on_annotation;

  bool null() { return scalar(Value{}); }
  bool boolean(bool b) { return scalar(Value{static_cast<double>(b), b, true}); }
  bool number_integer(number_integer_t v) { return scalar(Value{double(v), v, true}); }
  bool number_unsigned(number_unsigned_t v) {
    return scalar(Value{double(v), static_cast<std::int64_t>(v), true});
  }
  bool number_float(number_float_t v, const string_t&) {
    // Saturate: a double outside int64's range (1e300, inf) converted with a cast is UB.
    const std::int64_t i = !(v == v)      ? 0
                           : v >= 0x1p63  ? INT64_MAX
                           : v < -0x1p63  ? INT64_MIN
                                          : static_cast<std::int64_t>(v);
    return scalar(Value{v, i, true});
  }
  bool string(string_t& s) {
    Value v;
    v.is_string = true;
    v.str = &s;
    return scalar(v);
  }
  bool binary(binary_t&) { return true; }

  bool key(string_t& k) {
    top().key = key_of(k);
    return true;
  }

  bool start_object(std::size_t) {
    Kind parent = stack_.empty() ? Kind::kNone : top().kind;
    Kind kind = Kind::kSkip;
    if (stack_.empty()) {
      kind = Kind::kRoot;
    } else if (parent == Kind::kImages) {
      kind = Kind::kImage;
      image_ = RawImage{};
    } else if (parent == Kind::kAnnotations) {
      kind = Kind::kAnnotation;
      ann_ = RawAnnotation{};
    } else if (parent == Kind::kAnnotation && top().key == Key::kSegmentation) {
      kind = Kind::kSegObject;
      ann_.has_seg = true;
      ann_.seg = Segmentation{};
      ann_.seg.kind = Segmentation::Kind::kRleCounts;
    }
    stack_.push_back({kind, Key::kOther});
    return true;
  }

  bool end_object() {
    const Kind kind = top().kind;
    stack_.pop_back();
    if (kind == Kind::kImage) {
      images.push_back(std::move(image_));
    } else if (kind == Kind::kAnnotation) {
      ++n_annotations_;
      on_annotation(std::move(ann_));
    } else if (kind == Kind::kSegObject) {
      AMPKIT_CHECK(rle_size_.size() == 2, path_, ": annotation ", ann_.id,
                   ": RLE segmentation needs \"size\": [h, w]");
      ann_.seg.rle_h = static_cast<int>(rle_size_[0]);
      ann_.seg.rle_w = static_cast<int>(rle_size_[1]);
      rle_size_.clear();
    }
    return true;
  }

  bool start_array(std::size_t) {
    Kind kind = Kind::kSkip;
    if (!stack_.empty()) {
      const Frame& f = top();
      if (f.kind == Kind::kRoot && f.key == Key::kImages) kind = Kind::kImages;
      else if (f.kind == Kind::kRoot && f.key == Key::kAnnotations) kind = Kind::kAnnotations;
      else if (f.kind == Kind::kAnnotation && f.key == Key::kKeypoints) kind = Kind::kKeypoints;
      else if (f.kind == Kind::kAnnotation && f.key == Key::kBbox) kind = Kind::kBbox;
      else if (f.kind == Kind::kAnnotation && f.key == Key::kSegmentation) {
        kind = Kind::kPolygonList;
        ann_.has_seg = true;
        ann_.seg = Segmentation{};
      } else if (f.kind == Kind::kPolygonList) {
        kind = Kind::kPolygon;
        ann_.seg.polygons.emplace_back();
      } else if (f.kind == Kind::kSegObject && f.key == Key::kCounts) {
        kind = Kind::kCounts;
        ann_.seg.kind = Segmentation::Kind::kRleCounts;
      } else if (f.kind == Kind::kSegObject && f.key == Key::kSize) {
        kind = Kind::kSize;
        rle_size_.clear();
      }
    }
    stack_.push_back({kind, Key::kOther});
    return true;
  }

  bool end_array() {
    stack_.pop_back();
    return true;
  }

  template <class Exception>
  bool parse_error(std::size_t position, const std::string& last_token, const Exception& ex) {
    AMPKIT_FAIL("COCO annotations '", path_, "': malformed JSON at byte ", position, " near '",
                last_token.substr(0, 40), "': ", ex.what());
  }

  std::int64_t n_annotations() const { return n_annotations_; }

 private:
  enum class Kind {
    kNone, kSkip, kRoot, kImages, kImage, kAnnotations, kAnnotation, kKeypoints, kBbox,
    kPolygonList, kPolygon, kSegObject, kCounts, kSize
  };
  enum class Key {
    kOther, kImages, kAnnotations, kId, kFileName, kWidth, kHeight, kImageId, kCategoryId,
    kIsCrowd, kNumKeypoints, kKeypoints, kBbox, kSegmentation, kCounts, kSize
  };
  struct Frame {
    Kind kind;
    Key key;
  };
  static Key key_of(const std::string& k) {
    // Called for every key in the file: compare by length first.
    switch (k.size()) {
      case 2: return k == "id" ? Key::kId : Key::kOther;
      case 4: return k == "bbox" ? Key::kBbox : k == "size" ? Key::kSize : Key::kOther;
      case 5: return k == "width" ? Key::kWidth : Key::kOther;
      case 6: return k == "height" ? Key::kHeight : k == "images" ? Key::kImages
                   : k == "counts" ? Key::kCounts : Key::kOther;
      case 7: return k == "iscrowd" ? Key::kIsCrowd : Key::kOther;
      case 8: return k == "image_id" ? Key::kImageId : Key::kOther;
      case 9: return k == "keypoints" ? Key::kKeypoints : k == "file_name" ? Key::kFileName
                   : Key::kOther;
      case 11: return k == "category_id" ? Key::kCategoryId : k == "annotations" ? Key::kAnnotations
                    : Key::kOther;
      case 12: return k == "segmentation" ? Key::kSegmentation : Key::kOther;
      case 13: return k == "num_keypoints" ? Key::kNumKeypoints : Key::kOther;
      default: return Key::kOther;
    }
  }
  struct Value {
    double d = 0;
    std::int64_t i = 0;
    bool is_number = false;
    bool is_string = false;
    string_t* str = nullptr;
  };

  Frame& top() { return stack_.back(); }

  double need_number(const Value& v, const char* field) const {
    if (!v.is_number)
      AMPKIT_FAIL("COCO annotations '", path_, "': ", where(), " field '", field,
                  "' must be a number");
    return v.d;
  }
  /// A number that must fit `T` (int, uint32): a cast of an out-of-range double is UB, and a
  /// width of 1e30 or a count of -5 is a corrupt file, not something to wrap around.
  template <class T>
  T need_integral(const Value& v, const char* field) const {
    const double d = need_number(v, field);
    if (!(d >= static_cast<double>(std::numeric_limits<T>::min()) &&
          d <= static_cast<double>(std::numeric_limits<T>::max())))
      AMPKIT_FAIL("COCO annotations '", path_, "': ", where(), " field '", field, "' = ", d,
                  " is out of range");
    return static_cast<T>(d);
  }
  std::string where() const {
    if (!stack_.empty() && stack_.back().kind == Kind::kImage)
      return "image #" + std::to_string(images.size()) +
             (image_.id >= 0 ? " (id " + std::to_string(image_.id) + ")" : "");
    return "annotation #" + std::to_string(n_annotations_) +
           (ann_.id >= 0 ? " (id " + std::to_string(ann_.id) + ")" : "");
  }

  bool scalar(const Value& v) {
    if (stack_.empty()) return true;
    Frame& f = top();
    switch (f.kind) {
      case Kind::kImage:
        if (f.key == Key::kId) need_number(v, "id"), image_.id = v.i;
        else if (f.key == Key::kWidth) image_.width = need_integral<int>(v, "width");
        else if (f.key == Key::kHeight) image_.height = need_integral<int>(v, "height");
        else if (f.key == Key::kFileName) {
          if (!v.is_string)
            AMPKIT_FAIL("COCO annotations '", path_, "': ", where(), " 'file_name' must be a string");
          image_.file_name = *v.str;
        }
        break;
      case Kind::kAnnotation:
        if (f.key == Key::kId) need_number(v, "id"), ann_.id = v.i;
        else if (f.key == Key::kImageId) need_number(v, "image_id"), ann_.image_id = v.i;
        else if (f.key == Key::kCategoryId) need_number(v, "category_id"), ann_.category_id = v.i;
        else if (f.key == Key::kIsCrowd) ann_.iscrowd = need_integral<int>(v, "iscrowd");
        else if (f.key == Key::kNumKeypoints)
          ann_.num_keypoints = need_integral<int>(v, "num_keypoints");
        break;
      case Kind::kKeypoints:
        ann_.keypoints.push_back(static_cast<float>(need_number(v, "keypoints")));
        break;
      case Kind::kBbox:
        ann_.bbox.push_back(static_cast<float>(need_number(v, "bbox")));
        break;
      case Kind::kPolygon:
        ann_.seg.polygons.back().push_back(need_number(v, "segmentation"));
        break;
      case Kind::kCounts:
        ann_.seg.counts.push_back(need_integral<std::uint32_t>(v, "counts"));
        break;
      case Kind::kSize:
        rle_size_.push_back(need_integral<int>(v, "size"));
        break;
      case Kind::kSegObject:
        if (f.key == Key::kCounts) {
          if (!v.is_string)
            AMPKIT_FAIL("COCO annotations '", path_, "': ", where(),
                        " RLE 'counts' must be a list or a string");
          ann_.seg.kind = Segmentation::Kind::kRleString;
          ann_.seg.rle_string = *v.str;
        }
        break;
      default:
        break;
    }
    return true;
  }

  std::string path_;
  std::vector<Frame> stack_;
  RawImage image_;
  RawAnnotation ann_;
  std::vector<std::int64_t> rle_size_;
  std::int64_t n_annotations_ = 0;
};

}  // namespace detail

/// COCO person keypoints in bottom-up form: every image that has at least one valid person.
class CocoKeypoints {
 public:
  /// Load `annotation_file`; images are found as `image_root / file_name`.
  static CocoKeypoints load(const std::string& annotation_file, const std::string& image_root,
                            const CocoLoadOptions& opt = {}) {
    CocoKeypoints ds;
    ds.annotation_file_ = annotation_file;
    ds.image_root_ = image_root;
    CocoLoadReport& rep = ds.report_;

    auto problem = [&](std::string msg) {
      msg = "COCO annotations '" + annotation_file + "': " + msg;
      if (opt.strict) AMPKIT_FAIL(msg);
      if (rep.problems.size() < opt.max_problem_messages) rep.problems.push_back(std::move(msg));
    };

    detail::CocoSax sax(annotation_file);
    // Annotations usually come after the images; any that come before wait in `pending`.
    std::unordered_map<std::int64_t, std::size_t> index;  // image id -> position in sax.images
    std::size_t n_indexed = 0;
    std::vector<CocoImage> per_image;  // parallel to sax.images
    std::vector<detail::CocoSax::RawAnnotation> pending;

    auto classify = [&](detail::CocoSax::RawAnnotation&& a, std::size_t img_pos) {
      const auto& img = sax.images[img_pos];
      if (a.category_id != 1) {
        ++rep.n_other_category;
        return;
      }
      if (a.keypoints.size() != 3 * kCocoKeypoints || a.bbox.size() != 4) {
        ++rep.n_bad_annotation;
        problem("annotation id " + std::to_string(a.id) + " (image id " +
                std::to_string(a.image_id) + ") has " + std::to_string(a.keypoints.size()) +
                " keypoint values and " + std::to_string(a.bbox.size()) +
                " bbox values; expected 51 and 4. Skipped.");
        return;
      }
      // mmpose's _is_valid_instance: crowd, num_keypoints == 0, empty clipped box, all-zero
      // keypoints. Their segments become ignore regions.
      float kmax = 0;
      int n_labelled = 0;
      for (int k = 0; k < kCocoKeypoints; ++k) {
        kmax = std::max({kmax, a.keypoints[3 * k], a.keypoints[3 * k + 1]});
        n_labelled += std::max(a.keypoints[3 * k], a.keypoints[3 * k + 1]) != 0;
      }
      const int num_kpt = a.num_keypoints >= 0 ? a.num_keypoints : n_labelled;
      auto clip = [](float v, float hi) { return std::min(std::max(v, 0.f), hi); };
      const float wmax = static_cast<float>(img.width - 1), hmax = static_cast<float>(img.height - 1);
      const float bw = clip(a.bbox[0] + a.bbox[2], wmax) - clip(a.bbox[0], wmax);
      const float bh = clip(a.bbox[1] + a.bbox[3], hmax) - clip(a.bbox[1], hmax);
      bool valid = true;
      if (a.iscrowd) ++rep.n_crowd, valid = false;
      else if (num_kpt == 0 || kmax <= 0) ++rep.n_no_keypoints, valid = false;
      else if (bw <= 0 || bh <= 0) ++rep.n_degenerate_box, valid = false;
      a.num_keypoints = num_kpt;
      if (valid) ++rep.n_valid_persons;
      if (valid) {
        CocoPerson p;
        p.id = a.id;
        std::copy(a.keypoints.begin(), a.keypoints.end(), p.keypoints.begin());
        std::copy(a.bbox.begin(), a.bbox.end(), p.bbox.begin());
        p.num_keypoints = num_kpt;
        per_image[img_pos].persons.push_back(p);
      } else if (a.has_seg) {
        per_image[img_pos].ignore_segs.push_back(std::move(a.seg));
      }
    };

    sax.on_annotation = [&](detail::CocoSax::RawAnnotation&& a) {
      while (n_indexed < sax.images.size()) {
        const auto& im = sax.images[n_indexed];
        if (!index.emplace(im.id, n_indexed).second)
          AMPKIT_FAIL("COCO annotations '", annotation_file, "': image id ", im.id,
                      " appears twice");
        ++n_indexed;
      }
      per_image.resize(sax.images.size());
      auto it = index.find(a.image_id);
      if (it == index.end()) {
        pending.push_back(std::move(a));
        return;
      }
      classify(std::move(a), it->second);
    };

    {
      detail::ChunkReader reader(annotation_file, opt.chunk_bytes);
      const bool ok = nlohmann::json::sax_parse(detail::ChunkReader::Iterator(&reader),
                                                detail::ChunkReader::Iterator(), &sax);
      AMPKIT_CHECK(ok, "COCO annotations '", annotation_file, "': parse failed");
    }
    for (; n_indexed < sax.images.size(); ++n_indexed) {
      const auto& im = sax.images[n_indexed];
      if (!index.emplace(im.id, n_indexed).second)
        AMPKIT_FAIL("COCO annotations '", annotation_file, "': image id ", im.id, " appears twice");
    }
    per_image.resize(sax.images.size());
    for (auto& a : pending) {
      auto it = index.find(a.image_id);
      if (it == index.end()) {
        ++rep.n_unknown_image;
        problem("annotation id " + std::to_string(a.id) + " refers to image id " +
                std::to_string(a.image_id) + ", which is not in 'images'. Skipped.");
        continue;
      }
      classify(std::move(a), it->second);
    }
    rep.n_images = static_cast<std::int64_t>(sax.images.size());
    rep.n_annotations = sax.n_annotations();

    for (std::size_t i = 0; i < sax.images.size(); ++i) {
      CocoImage& img = per_image[i];
      if (img.persons.empty()) continue;  // bottom-up keeps images with >= 1 valid person
      auto& raw = sax.images[i];
      if (raw.width <= 0 || raw.height <= 0 || raw.file_name.empty()) {
        ++rep.n_bad_annotation;
        problem("image id " + std::to_string(raw.id) + " ('" + raw.file_name +
                "') has no valid width/height/file_name. Skipped.");
        continue;
      }
      img.id = raw.id;
      img.file_name = std::move(raw.file_name);
      img.width = raw.width;
      img.height = raw.height;
      ds.images_.push_back(std::move(img));
    }
    rep.n_images_kept = static_cast<std::int64_t>(ds.images_.size());
    AMPKIT_CHECK(!ds.images_.empty(), "COCO annotations '", annotation_file, "': no image has a ",
                 "valid person annotation (", rep.n_images, " images, ", rep.n_annotations,
                 " annotations, ", rep.n_crowd, " crowd, ", rep.n_no_keypoints,
                 " without keypoints): the dataset is empty");
    return ds;
  }

  std::size_t size() const { return images_.size(); }
  const CocoImage& operator[](std::size_t i) const { return images_[i]; }
  const std::vector<CocoImage>& images() const { return images_; }
  const CocoLoadReport& report() const { return report_; }
  const std::string& annotation_file() const { return annotation_file_; }
  const std::string& image_root() const { return image_root_; }
  /// Full path of image i.
  std::string image_path(std::size_t i) const {
    return (std::filesystem::path(image_root_) / images_[i].file_name).string();
  }

 private:
  std::vector<CocoImage> images_;
  CocoLoadReport report_;
  std::string annotation_file_, image_root_;
};

}  // namespace ampkit::data
