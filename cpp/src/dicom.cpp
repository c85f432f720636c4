#include "neurovfm/dicom.hpp"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <locale>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <type_traits>

#include "neurovfm/dicom_codecs.hpp"
#include "neurovfm/dtype.hpp"
#include "neurovfm/errors.hpp"
#include "neurovfm/parallel.hpp"

#ifdef NEUROVFM_HAVE_ZLIB
#include <zlib.h>
#endif

namespace neurovfm {
namespace {

constexpr std::uint32_t kUndefinedLength = 0xFFFFFFFFu;
constexpr int kMaxDepth = 32;                     // nested sequences
constexpr std::int64_t kChunk = 16 * 1024;        // read-ahead of the header window
constexpr std::int64_t kMaxValue = 1024 * 1024;   // longest value we decode

const char* const kImplicitLE = "1.2.840.10008.1.2";
const char* const kExplicitLE = "1.2.840.10008.1.2.1";
const char* const kExplicitBE = "1.2.840.10008.1.2.2";
const char* const kDeflatedLE = "1.2.840.10008.1.2.1.99";

std::string hex_tag(std::uint16_t g, std::uint16_t e) {
  static const char* digits = "0123456789ABCDEF";
  std::string s = "(0000,0000)";
  for (int i = 0; i < 4; ++i) {
    s[4 - i] = digits[(g >> (4 * i)) & 0xF];
    s[9 - i] = digits[(e >> (4 * i)) & 0xF];
  }
  return s;
}

// A window over a file: get(at, n) returns a pointer to bytes [at, at + n) or
// nullptr when they are not all inside the file. Only the window is held in
// memory; skipped values are never read.
class FileWindow {
 public:
  // A window over bytes already in memory (an inflated dataset).
  explicit FileWindow(std::vector<std::uint8_t> bytes) : buf_(std::move(bytes)) {
    size_ = static_cast<std::int64_t>(buf_.size());
    ok_ = true;
    memory_ = true;
  }
  explicit FileWindow(const std::string& path) : in_(path, std::ios::binary) {
    if (!in_) return;
    in_.seekg(0, std::ios::end);
    const std::streamoff end = in_.tellg();
    if (!in_ || end < 0) return;
    size_ = static_cast<std::int64_t>(end);
    ok_ = true;
  }
  bool ok() const { return ok_; }
  std::int64_t size() const { return size_; }

  const std::uint8_t* get(std::int64_t at, std::int64_t n) {
    if (!ok_ || at < 0 || n < 0 || at > size_ || n > size_ - at) return nullptr;
    if (memory_) return buf_.data() + at;
    const auto have = static_cast<std::int64_t>(buf_.size());
    if (at >= base_ && at - base_ <= have && n <= have - (at - base_))
      return buf_.data() + (at - base_);
    const std::int64_t len = std::min(size_ - at, std::max(n, kChunk));
    buf_.resize(static_cast<std::size_t>(len));
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(at));
    in_.read(reinterpret_cast<char*>(buf_.data()), static_cast<std::streamsize>(len));
    if (in_.gcount() != static_cast<std::streamsize>(len)) {  // the file shrank under us
      buf_.clear();
      base_ = 0;
      return nullptr;
    }
    base_ = at;
    return buf_.data();
  }

 private:
  std::ifstream in_;
  bool ok_ = false;
  std::int64_t size_ = 0;
  std::int64_t base_ = 0;
  std::vector<std::uint8_t> buf_;
  bool memory_ = false;
};

// Deflated Explicit VR Little Endian: bytes [0, offset) of `path` as they are, then
// the raw-deflate stream from `offset` on, inflated (at most 2^32 bytes: a DICOM
// value length is 32 bits). Sets `error` and returns false on a broken stream.
bool inflate_dataset(const std::string& path, std::int64_t offset, std::vector<std::uint8_t>& out,
                     std::string& error) {
#ifdef NEUROVFM_HAVE_ZLIB
  std::ifstream in(path, std::ios::binary);
  if (!in) return error = "cannot open file", false;
  in.seekg(0, std::ios::end);
  const std::int64_t size = static_cast<std::int64_t>(in.tellg());
  if (offset < 0 || offset > size) return error = "truncated file", false;
  std::vector<std::uint8_t> raw(static_cast<std::size_t>(size));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(size));
  if (in.gcount() != static_cast<std::streamsize>(size)) return error = "cannot read file", false;
  out.assign(raw.begin(), raw.begin() + offset);
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return error = "zlib: cannot start inflating", false;
  const std::size_t cap = std::size_t(1) << 32;
  zs.next_in = raw.data() + offset;
  zs.avail_in = static_cast<uInt>(std::min<std::int64_t>(size - offset, INT_MAX));
  std::size_t fed = static_cast<std::size_t>(size - offset) - zs.avail_in;
  int rc = Z_OK;
  std::size_t have = out.size();
  out.resize(have + std::max<std::size_t>(4 * static_cast<std::size_t>(size - offset), 1 << 16));
  for (;;) {
    if (have == out.size()) {
      if (out.size() - static_cast<std::size_t>(offset) >= cap) {
        inflateEnd(&zs);
        return error = "deflated dataset inflates to more than 4 GiB", false;
      }
      out.resize(std::min(out.size() * 2, cap + static_cast<std::size_t>(offset)));
    }
    zs.next_out = out.data() + have;
    zs.avail_out = static_cast<uInt>(std::min<std::size_t>(out.size() - have, INT_MAX));
    const uInt before = zs.avail_out;
    if (zs.avail_in == 0 && fed > 0) {
      zs.avail_in = static_cast<uInt>(std::min<std::size_t>(fed, INT_MAX));
      fed -= zs.avail_in;
    }
    rc = inflate(&zs, Z_NO_FLUSH);
    have += before - zs.avail_out;
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && fed == 0) {
      inflateEnd(&zs);
      return error = "deflated dataset is truncated", false;
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      inflateEnd(&zs);
      return error = std::string("deflated dataset is corrupt (zlib: ") +
                     (zs.msg ? zs.msg : "error") + ")",
             false;
    }
  }
  inflateEnd(&zs);
  out.resize(have);
  return true;
#else
  (void)path;
  (void)offset;
  (void)out;
  error = "this build has no zlib";
  return false;
#endif
}

inline std::uint16_t rd16(const std::uint8_t* p, bool le) {
  return le ? static_cast<std::uint16_t>(p[0] | (p[1] << 8))
            : static_cast<std::uint16_t>(p[1] | (p[0] << 8));
}
inline std::uint32_t rd32(const std::uint8_t* p, bool le) {
  return le ? (std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
               (std::uint32_t(p[3]) << 24))
            : (std::uint32_t(p[3]) | (std::uint32_t(p[2]) << 8) | (std::uint32_t(p[1]) << 16) |
               (std::uint32_t(p[0]) << 24));
}

bool valid_vr(const std::uint8_t* v) {
  static const char* const vrs[] = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL",
                                    "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
                                    "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC",
                                    "UI", "UL", "UN", "UR", "US", "UT", "UV"};
  for (const char* s : vrs)
    if (v[0] == static_cast<std::uint8_t>(s[0]) && v[1] == static_cast<std::uint8_t>(s[1]))
      return true;
  return false;
}

bool long_vr(const char* v) {
  static const char* const vrs[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                    "SV", "UC", "UN", "UR", "UT", "UV"};
  for (const char* s : vrs)
    if (v[0] == s[0] && v[1] == s[1]) return true;
  return false;
}

// libc++ before LLVM 20 (Apple's toolchains included) has no floating-point
// std::from_chars; there, a stream imbued with the classic locale parses the
// value (also correctly rounded). NEUROVFM_NO_FP_FROM_CHARS forces that path
// (to test it on other platforms).
#if (defined(_LIBCPP_VERSION) && _LIBCPP_VERSION < 200000) || defined(NEUROVFM_NO_FP_FROM_CHARS)
#define NEUROVFM_FP_FROM_CHARS 0
#else
#define NEUROVFM_FP_FROM_CHARS 1
#endif

// Parses the whole of `item` as a decimal number; false when anything is left over.
bool parse_double(std::string_view item, double& v) {
#if NEUROVFM_FP_FROM_CHARS
  const auto r = std::from_chars(item.data(), item.data() + item.size(), v);
  return r.ec == std::errc() && r.ptr == item.data() + item.size();
#else
  // Only what from_chars' general format takes: no leading '+', no hex.
  if (item.empty() || item.front() == '+') return false;
  for (char c : item)
    if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' ||
          c == 'i' || c == 'n' || c == 'f' || c == 'a' || c == 'I' || c == 'N' || c == 'F' ||
          c == 'A'))
      return false;
  std::istringstream in{std::string(item)};
  in.imbue(std::locale::classic());
  in >> v;
  return !in.fail() && in.peek() == std::char_traits<char>::eof();
#endif
}

std::string_view trim(std::string_view s) {
  auto blank = [](char c) { return c == ' ' || c == '\0' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && blank(s.back())) s.remove_suffix(1);
  return s;
}

// Parses up to `max` backslash-separated decimal strings (DS). Returns the
// number of values parsed before the first one that is empty or malformed.
int parse_ds(std::string_view s, double* out, int max) {
  int n = 0;
  while (n < max) {
    const auto bs = s.find('\\');
    std::string_view item = trim(s.substr(0, bs));
    if (!item.empty() && item.front() == '+') item.remove_prefix(1);
    if (item.empty()) break;
    double v = 0;
    if (!parse_double(item, v) || !std::isfinite(v)) break;
    out[n++] = v;
    if (bs == std::string_view::npos) break;
    s.remove_prefix(bs + 1);
  }
  return n;
}

bool parse_is(std::string_view s, int* out) {
  std::string_view item = trim(s.substr(0, s.find('\\')));
  if (!item.empty() && item.front() == '+') item.remove_prefix(1);
  if (item.empty()) return false;
  long long v = 0;
  const auto r = std::from_chars(item.data(), item.data() + item.size(), v);
  if (r.ec != std::errc() || r.ptr != item.data() + item.size()) return false;
  if (v < INT_MIN || v > INT_MAX) return false;
  *out = static_cast<int>(v);
  return true;
}

struct Element {
  std::uint16_t group = 0, element = 0;
  char vr[2] = {'U', 'N'};
  std::uint32_t length = 0;
};

class Parser {
 public:
  Parser(FileWindow& w, DicomHeader& h, const std::string& path) : w_(w), h_(h), path_(path) {}

  void run() {
    h_.file_size = w_.size();
    std::int64_t start = 0;
    w_.get(0, std::min(w_.size(), kChunk));  // one read for preamble, meta and most headers
    const std::uint8_t* p = w_.get(128, 4);
    if (p && std::memcmp(p, "DICM", 4) == 0) {
      h_.has_preamble = true;
      h_.is_dicom = true;
      start = 132;
    }
    pos_ = start;
    if (!parse_meta()) return;
#ifdef NEUROVFM_HAVE_ZLIB
    if (h_.transfer_syntax == kDeflatedLE && !deflated_) {
      // Inflate everything after the meta, then parse that as explicit VR little endian.
      std::vector<std::uint8_t> all;
      if (!inflate_dataset(path_, pos_, all, h_.error)) return;
      FileWindow mem(std::move(all));
      Parser sub(mem, h_, path_);
      sub.deflated_ = true;
      sub.pos_ = pos_;
      h_.deflate_offset = pos_;
      if (!sub.choose_encoding()) return;
      sub.parse_dataset();
      h_.file_size = w_.size();
      return;
    }
#endif
    if (!choose_encoding()) return;
    parse_dataset();
  }

 private:
  FileWindow& w_;
  DicomHeader& h_;
  const std::string& path_;
  bool deflated_ = false;  // parsing an inflated dataset
  std::int64_t pos_ = 0;
  bool explicit_ = true;
  bool le_ = true;

  bool fail(const std::string& msg) {
    if (h_.error.empty()) h_.error = msg;
    return false;
  }
  std::int64_t remaining() const { return w_.size() - pos_; }

  // Reads an element header at pos_ and moves pos_ to its value.
  bool read_header(Element& e, bool explicit_vr, bool le) {
    const std::uint8_t* p = w_.get(pos_, 8);
    if (!p) return fail("truncated file: element header at byte " + std::to_string(pos_) +
                        " runs past the end of the file");
    e.group = rd16(p, le);
    e.element = rd16(p + 2, le);
    if (e.group == 0xFFFE) {  // items and delimiters never carry a VR
      e.vr[0] = e.vr[1] = ' ';
      e.length = rd32(p + 4, le);
      pos_ += 8;
      return true;
    }
    if (explicit_vr) {
      if (!valid_vr(p + 4))
        return fail("invalid VR in element " + hex_tag(e.group, e.element) + " at byte " +
                    std::to_string(pos_));
      e.vr[0] = static_cast<char>(p[4]);
      e.vr[1] = static_cast<char>(p[5]);
      if (long_vr(e.vr)) {
        p = w_.get(pos_, 12);
        if (!p) return fail("truncated file: element header at byte " + std::to_string(pos_));
        e.length = rd32(p + 8, le);
        pos_ += 12;
      } else {
        e.length = rd16(p + 6, le);
        pos_ += 8;
      }
    } else {
      e.vr[0] = 'U';
      e.vr[1] = 'N';
      e.length = rd32(p + 4, le);
      pos_ += 8;
    }
    return true;
  }

  bool skip_defined(const Element& e) {
    if (static_cast<std::int64_t>(e.length) > remaining())
      return fail("element " + hex_tag(e.group, e.element) + " claims " +
                  std::to_string(e.length) + " bytes but only " + std::to_string(remaining()) +
                  " remain (truncated file or bogus length)");
    pos_ += e.length;
    return true;
  }

  // pos_ is at the first item of an undefined-length sequence (or of the
  // fragments of encapsulated pixel data); moves past its delimiter.
  bool skip_sequence(bool explicit_vr, bool le, int depth) {
    if (depth > kMaxDepth) return fail("sequences nested more than 32 deep");
    for (;;) {
      const std::uint8_t* p = w_.get(pos_, 8);
      if (!p) return fail("truncated file inside a sequence at byte " + std::to_string(pos_));
      const std::uint16_t g = rd16(p, le), el = rd16(p + 2, le);
      const std::uint32_t len = rd32(p + 4, le);
      pos_ += 8;
      if (g == 0xFFFE && el == 0xE0DD) return true;
      if (g != 0xFFFE || el != 0xE000)
        return fail("unexpected element " + hex_tag(g, el) + " inside a sequence at byte " +
                    std::to_string(pos_ - 8));
      if (len == kUndefinedLength) {
        if (!skip_item(explicit_vr, le, depth + 1)) return false;
      } else {
        Element item;
        item.group = g;
        item.element = el;
        item.length = len;
        if (!skip_defined(item)) return false;
      }
    }
  }

  // pos_ is inside an undefined-length item; moves past its delimiter.
  bool skip_item(bool explicit_vr, bool le, int depth) {
    if (depth > kMaxDepth) return fail("sequences nested more than 32 deep");
    for (;;) {
      Element e;
      if (!read_header(e, explicit_vr, le)) return false;
      if (e.group == 0xFFFE) {
        if (e.element == 0xE00D) return true;
        return fail("unexpected item tag " + hex_tag(e.group, e.element) + " at byte " +
                    std::to_string(pos_ - 8));
      }
      if (e.length == kUndefinedLength) {
        if (!skip_undefined_value(e, explicit_vr, le, depth)) return false;
      } else if (!skip_defined(e)) {
        return false;
      }
    }
  }

  bool skip_undefined_value(const Element& e, bool explicit_vr, bool le, int depth) {
    const bool sq = e.vr[0] == 'S' && e.vr[1] == 'Q';
    const bool un = e.vr[0] == 'U' && e.vr[1] == 'N';
    const bool pixels = e.group == 0x7FE0 && e.element == 0x0010;
    if (explicit_vr && !sq && !un && !pixels)
      return fail("undefined length for element " + hex_tag(e.group, e.element) + " with VR " +
                  std::string(e.vr, 2));
    // An undefined-length UN is a sequence encoded in implicit VR little endian.
    const bool sub_explicit = explicit_vr && !un;
    return skip_sequence(sub_explicit, un ? true : le, depth + 1);
  }

  bool parse_meta() {
    for (;;) {
      const std::uint8_t* p = w_.get(pos_, 8);
      if (!p) break;
      if (rd16(p, true) != 0x0002) break;
      // Meta is explicit VR little endian; tolerate implicit elements as GDCM does.
      const bool ex = valid_vr(p + 4);
      Element e;
      if (!read_header(e, ex, true)) return false;
      if (e.length == kUndefinedLength) {
        if (!skip_undefined_value(e, ex, true, 0)) return false;
        continue;
      }
      if (static_cast<std::int64_t>(e.length) > remaining())
        return fail("file meta element " + hex_tag(e.group, e.element) +
                    " runs past the end of the file (truncated file)");
      if ((e.element == 0x0010 || e.element == 0x0002) && e.length <= 256) {
        const std::uint8_t* v = w_.get(pos_, e.length);
        if (!v) return fail("truncated file in the file meta information");
        std::string s(trim(std::string_view(reinterpret_cast<const char*>(v), e.length)));
        if (e.element == 0x0010)
          h_.transfer_syntax = s;
        else
          h_.media_storage_sop_class_uid = s;
      }
      pos_ += e.length;
      h_.is_dicom = true;
    }
    return true;
  }

  bool choose_encoding() {
    const std::string& ts = h_.transfer_syntax;
    bool native = false;
    if (ts == kImplicitLE) {
      explicit_ = false;
      native = true;
    } else if (ts == kExplicitLE) {
      native = true;
    } else if (ts == kExplicitBE) {
      le_ = false;
    } else if (ts == kDeflatedLE && deflated_) {
      native = true;  // the inflated dataset: explicit VR little endian
    } else if (ts == kDeflatedLE || ts == "1.2.840.10008.1.2.4.95") {
      return fail("deflated transfer syntax " + ts + ": the dataset is not parsed here");
    } else if (ts.empty()) {
      native = true;  // no meta information: guess below, little endian only
    }
    // Validate or guess explicit/implicit VR from the first dataset element,
    // as GDCM tolerates files whose meta header lies about it.
    const std::uint8_t* p = w_.get(pos_, 8);
    if (!p) {
      if (!h_.is_dicom) return fail("not a DICOM file (too short)");
      return fail("no dataset after the file meta information (truncated file)");
    }
    const bool looks_explicit = valid_vr(p + 4);
    if (le_) {
      if (ts.empty()) {
        explicit_ = looks_explicit;
        if (!h_.is_dicom) {
          // Raw dataset without preamble or meta: accept what ITK accepts
          // (a first element in group 0x0008) with a sane first length.
          const std::uint16_t g = rd16(p, true);
          if (g != 0x0008) return fail("not a DICOM file");
          Element e;
          const std::int64_t save = pos_;
          if (!read_header(e, explicit_, true)) {
            h_.error.clear();
            return fail("not a DICOM file");
          }
          if (e.length != kUndefinedLength && static_cast<std::int64_t>(e.length) > remaining())
            return fail("not a DICOM file");
          pos_ = save;
          h_.is_dicom = true;
        }
      } else if (explicit_ && !looks_explicit) {
        explicit_ = false;
      }
    }
    h_.little_endian = le_;
    h_.explicit_vr = explicit_;
    native_syntax_ = native && le_;
    return true;
  }
  bool native_syntax_ = false;

  void parse_dataset() {
    while (pos_ < w_.size()) {
      Element e;
      if (!read_header(e, explicit_, le_)) return;
      if (e.group == 0xFFFE) {
        fail("unexpected item tag " + hex_tag(e.group, e.element) + " at top level, byte " +
             std::to_string(pos_ - 8));
        return;
      }
      if (e.group == 0x7FE0 && (e.element == 0x0008 || e.element == 0x0009)) {
        h_.float_pixel_data = true;
        return;
      }
      if (e.group == 0x7FE0 && e.element == 0x0010) {
        h_.has_pixel_data = true;
        h_.pixel_offset = pos_;
        h_.pixel_length = e.length;
        h_.encapsulated = e.length == kUndefinedLength;
        h_.uncompressed_native = native_syntax_ && !h_.encapsulated;
        if (h_.encapsulated && (dicom_codec(h_.transfer_syntax) == DicomCodec::jpeg2000 ||
                                dicom_codec(h_.transfer_syntax) == DicomCodec::htj2k))
          j2k_pixel_format();
        if (h_.encapsulated && dicom_codec(h_.transfer_syntax) == DicomCodec::jpeg_lossless)
          jpeg_pixel_format();
        if (!h_.encapsulated && static_cast<std::int64_t>(e.length) > remaining())
          fail("pixel data claims " + std::to_string(e.length) + " bytes but only " +
               std::to_string(remaining()) + " remain (truncated file)");
        return;
      }
      if (e.length == kUndefinedLength) {
        if (!skip_undefined_value(e, explicit_, le_, 0)) return;
        continue;
      }
      if (static_cast<std::int64_t>(e.length) > remaining()) {
        skip_defined(e);  // sets the error
        return;
      }
      if (wanted(e) && e.length <= kMaxValue) {
        const std::uint8_t* v = w_.get(pos_, e.length);
        if (!v) {
          fail("could not read element " + hex_tag(e.group, e.element));
          return;
        }
        take(e, v);
      }
      pos_ += e.length;
    }
  }

  // The first `max` bytes (at most) of the first fragment, or nullptr.
  const std::uint8_t* first_fragment(std::int64_t max, std::int64_t& n) {
    std::int64_t at = pos_;
    const std::uint8_t* p = w_.get(at, 8);  // the offset table
    if (!p || rd16(p, true) != 0xFFFE || rd16(p + 2, true) != 0xE000) return nullptr;
    at += 8 + static_cast<std::int64_t>(rd32(p + 4, true));
    p = w_.get(at, 8);
    if (!p || rd16(p, true) != 0xFFFE || rd16(p + 2, true) != 0xE000) return nullptr;
    n = std::min<std::int64_t>({rd32(p + 4, true), max, w_.size() - at - 8});
    return n > 0 ? w_.get(at + 8, n) : nullptr;
  }

  // GDCM (Bitmap::TryJPEGCodec) lowers BitsStored to a lossless JPEG stream's
  // precision when that is smaller (same BitsAllocated, unsigned); so does this
  // parser, so the output type and the bit cleanup are GDCM's.
  void jpeg_pixel_format() {
    std::int64_t n = 0;
    const std::uint8_t* d = first_fragment(4096, n);
    if (!d || n < 4 || d[0] != 0xFF || d[1] != 0xD8) return;
    std::int64_t i = 2;
    while (i + 5 <= n && d[i] == 0xFF) {
      const int m = d[i + 1];
      const std::int64_t len = (d[i + 2] << 8) | d[i + 3];
      if (m == 0xC3) {
        const int prec = d[i + 4];
        const int ba = prec <= 8 ? 8 : 16;
        if (h_.pixel_representation == 0 && ba == h_.bits_allocated && prec >= 2 &&
            prec < h_.bits_stored) {
          h_.bits_stored = prec;
          h_.high_bit = prec - 1;
        }
        return;
      }
      if (m == 0xDA || len < 2) return;
      i += 2 + len;
    }
  }

  // GDCM (Bitmap::TryJPEG2000Codec, which also reads HTJ2K) takes a JPEG 2000
  // image's pixel format from the first codestream's SIZ marker (precision and
  // signedness of component 0) where the header disagrees: all of it when
  // BitsAllocated differs; only the precision (BitsStored) when BitsAllocated and
  // the signedness agree; nothing when only the signedness differs (the samples are
  // then the header's type). So does this parser, so the output type and the bit
  // cleanup are GDCM's. Looks only at the start of the first fragment; anything
  // unexpected changes nothing (the decoder reports it).
  void j2k_pixel_format() {
    std::int64_t at = pos_;
    for (int item = 0; item < 2; ++item) {  // the offset table, then the first fragment
      const std::uint8_t* p = w_.get(at, 8);
      if (!p || rd16(p, true) != 0xFFFE || rd16(p + 2, true) != 0xE000) return;
      const std::uint32_t len = rd32(p + 4, true);
      if (item == 0) {
        if (len > static_cast<std::uint32_t>(w_.size())) return;
        at += 8 + static_cast<std::int64_t>(len);
        continue;
      }
      const std::int64_t n = std::min<std::int64_t>({len, 4096, w_.size() - at - 8});
      const std::uint8_t* d = n > 0 ? w_.get(at + 8, n) : nullptr;
      if (!d) return;
      for (std::int64_t i = 0; i + 43 <= n; ++i) {  // SOC SIZ (a JP2 wraps the codestream)
        if (d[i] != 0xFF || d[i + 1] != 0x4F || d[i + 2] != 0xFF || d[i + 3] != 0x51) continue;
        const int ssiz = d[i + 42];
        const int prec = (ssiz & 0x7F) + 1;
        if (prec > 16) return;
        const int ba = prec <= 8 ? 8 : 16, pr = ssiz >> 7;
        if (ba == h_.bits_allocated && pr != h_.pixel_representation) return;
        h_.bits_allocated = ba;
        h_.bits_stored = prec;
        h_.high_bit = prec - 1;
        h_.pixel_representation = pr;
        return;
      }
      return;
    }
  }

  static bool wanted(const Element& e) {
    switch ((std::uint32_t(e.group) << 16) | e.element) {
      case 0x00080008: case 0x00080016: case 0x00080060: case 0x0008103E: case 0x0020000E:
      case 0x00200011: case 0x00200013: case 0x00200032: case 0x00200037: case 0x00280002: case 0x00280004:
      case 0x00280008: case 0x00280010: case 0x00280011: case 0x00280030: case 0x00280100:
      case 0x00280101: case 0x00280102: case 0x00280103: case 0x00281052: case 0x00281053:
        return true;
      default:
        return false;
    }
  }

  void take(const Element& e, const std::uint8_t* v) {
    const std::string_view s(reinterpret_cast<const char*>(v), e.length);
    const bool us = e.length >= 2;
    const int u = us ? rd16(v, le_) : 0;
    switch ((std::uint32_t(e.group) << 16) | e.element) {
      case 0x00080008: h_.image_type = std::string(trim(s)); break;
      case 0x00080016: h_.sop_class_uid = std::string(trim(s)); break;
      case 0x00080060: h_.modality = std::string(trim(s)); break;
      case 0x0008103E: h_.series_description = std::string(trim(s)); break;
      case 0x0020000E: h_.series_uid = std::string(trim(s)); break;
      case 0x00200011: h_.has_series_number = parse_is(s, &h_.series_number); break;
      case 0x00200013: h_.has_instance_number = parse_is(s, &h_.instance_number); break;
      case 0x00200032: {
        double tmp[3];
        if (parse_ds(s, tmp, 3) == 3) {
          std::copy(tmp, tmp + 3, h_.ipp);
          h_.has_ipp = true;
        }
        break;
      }
      case 0x00200037: {
        double tmp[6];
        if (parse_ds(s, tmp, 6) == 6) {
          std::copy(tmp, tmp + 6, h_.iop);
          h_.has_iop = true;
        }
        break;
      }
      case 0x00280030: {
        double tmp[2];
        if (parse_ds(s, tmp, 2) == 2) {
          std::copy(tmp, tmp + 2, h_.pixel_spacing);
          h_.has_pixel_spacing = true;
        }
        break;
      }
      case 0x00280002: if (us) h_.samples_per_pixel = u; break;
      case 0x00280004: h_.photometric = std::string(trim(s)); break;
      case 0x00280008: {
        int n = 0;
        if (parse_is(s, &n)) h_.number_of_frames = n;
        break;
      }
      case 0x00280010: if (us) h_.rows = u; break;
      case 0x00280011: if (us) h_.cols = u; break;
      case 0x00280100: if (us) h_.bits_allocated = u; break;
      case 0x00280101: if (us) h_.bits_stored = u; break;
      case 0x00280102: if (us) h_.high_bit = u; break;
      case 0x00280103: if (us) h_.pixel_representation = u; break;
      case 0x00281052: {
        // Like GDCM: a present, non-empty value replaces the default.
        h_.has_rescale = true;
        double x;
        if (parse_ds(s, &x, 1) == 1) h_.intercept = x;
        break;
      }
      case 0x00281053: {
        h_.has_rescale = true;
        double x;
        if (parse_ds(s, &x, 1) == 1) h_.slope = x == 0.0 ? 1.0 : x;
        break;
      }
      default: break;
    }
  }
};

// ---------------------------------------------------------------------------
// Pixel types (GDCM's Rescaler rule as used by ITK's GDCMImageIO).

// GDCM PixelFormat::ScalarType order; ITK refuses an output type that sorts
// before the stored type ("Pixel type larger than output type").
int gdcm_rank(DType t) {
  switch (t) {
    case DType::u8: return 0;
    case DType::i8: return 1;
    case DType::u16: return 4;
    case DType::i16: return 5;
    case DType::u32: return 6;
    case DType::i32: return 7;
    case DType::f32: return 11;
    case DType::f64: return 12;
  }
  return 99;
}

// (int)x == x as GDCM tests it; out-of-range values count as non-integers.
bool gdcm_is_int(double x) {
  return x >= static_cast<double>(INT_MIN) && x <= static_cast<double>(INT_MAX) &&
         x == static_cast<double>(static_cast<int>(x));
}

bool pixel_layout_supported(const DicomHeader& h) {
  if (h.samples_per_pixel != 1) return false;
  if (h.pixel_representation != 0 && h.pixel_representation != 1) return false;
  switch (h.bits_allocated) {
    case 8: return h.bits_stored == 8 && h.high_bit == 7;
    case 16: return h.bits_stored >= 1 && h.bits_stored <= 16 && h.high_bit == h.bits_stored - 1;
    case 32: return h.bits_stored == 32 && h.high_bit == 31;
    default: return false;
  }
}

enum class Rescale { identity, integer, real };

Rescale rescale_kind(const DicomHeader& h) {
  if (h.slope == 1.0 && h.intercept == 0.0) return Rescale::identity;
  if (!gdcm_is_int(h.slope) || !gdcm_is_int(h.intercept)) return Rescale::real;
  return Rescale::integer;
}

// ---------------------------------------------------------------------------
// Pixel conversion.

template <typename O>
inline O from_double(double d) {
  if constexpr (std::is_floating_point_v<O>) {
    return static_cast<O>(d);
  } else {
    if (std::isnan(d)) return O(0);
    const double lo = static_cast<double>(std::numeric_limits<O>::lowest());
    const double hi = static_cast<double>(std::numeric_limits<O>::max());
    if (d <= lo) return std::numeric_limits<O>::lowest();
    if (d >= hi) return std::numeric_limits<O>::max();
    return static_cast<O>(d);  // truncation toward zero, as ITK's static_cast
  }
}

template <typename O>
inline O from_int(std::int64_t v) {
  if constexpr (std::is_floating_point_v<O>) {
    return static_cast<O>(v);
  } else {
    // Modular, as ITK's static_cast between integer types.
    using U = std::make_unsigned_t<O>;
    return static_cast<O>(static_cast<U>(static_cast<std::uint64_t>(v)));
  }
}

template <typename S, typename O, Rescale K, bool Clean>
void convert_loop(const std::uint8_t* raw, std::size_t count, O* out, std::uint32_t mask,
                  std::uint32_t sign, double slope, double intercept) {
  const auto islope = static_cast<std::int64_t>(slope);
  const auto iintercept = static_cast<std::int64_t>(intercept);
  for (std::size_t i = 0; i < count; ++i) {
    S s;
    std::memcpy(&s, raw + i * sizeof(S), sizeof(S));  // little-endian host
    if constexpr (Clean) {
      std::uint32_t c = static_cast<std::uint16_t>(s) & mask;
      if constexpr (std::is_signed_v<S>) {
        if (c & sign) c |= ~mask;  // sign-extend BitsStored
      }
      s = static_cast<S>(static_cast<std::uint16_t>(c));
    }
    if constexpr (K == Rescale::identity) {
      out[i] = from_int<O>(static_cast<std::int64_t>(s));
    } else if constexpr (K == Rescale::integer) {
      // Integer slope and intercept: exact in int64, equal to GDCM's double
      // arithmetic (|value| < 2^53).
      out[i] = from_int<O>(islope * static_cast<std::int64_t>(s) + iintercept);
    } else {
      out[i] = from_double<O>(slope * static_cast<double>(s) + intercept);
    }
  }
}

// Stored frame(s) -> output values, as GDCM (bit cleanup, per-file rescale into
// the file's own type) followed by ITK's static_cast into the series type.
template <typename S, typename O>
void convert_frame(const std::uint8_t* raw, std::size_t count, const DicomHeader& h, O* out) {
  const int bs = h.bits_stored;
  const bool clean = sizeof(S) == 2 && bs < 16;
  const std::uint32_t mask = clean ? ((1u << bs) - 1u) : 0xFFFFFFFFu;
  const std::uint32_t sign = clean ? (1u << (bs - 1)) : 0u;
  const double a = h.slope, b = h.intercept;
  switch (rescale_kind(h)) {
    case Rescale::identity:
      if (clean) convert_loop<S, O, Rescale::identity, true>(raw, count, out, mask, sign, a, b);
      else convert_loop<S, O, Rescale::identity, false>(raw, count, out, mask, sign, a, b);
      break;
    case Rescale::integer:
      if (clean) convert_loop<S, O, Rescale::integer, true>(raw, count, out, mask, sign, a, b);
      else convert_loop<S, O, Rescale::integer, false>(raw, count, out, mask, sign, a, b);
      break;
    case Rescale::real:
      if (clean) convert_loop<S, O, Rescale::real, true>(raw, count, out, mask, sign, a, b);
      else convert_loop<S, O, Rescale::real, false>(raw, count, out, mask, sign, a, b);
      break;
  }
}

std::size_t dtype_size(DType t) {
  return dispatch_dtype(t, [](auto v) { return sizeof(v); });
}

// ``count`` stored values of type ``sd`` at ``raw`` -> the output type ``od`` at ``dst``
// (convert_frame). May run in place (raw == dst, same type): element i is read before it
// is written.
void store_frames(DType sd, DType od, const std::uint8_t* raw, std::size_t count, const DicomHeader& h,
                  std::uint8_t* dst) {
  dispatch_dtype(od, [&](auto o) {
    using O = decltype(o);
    dispatch_dtype(sd, [&](auto s) {
      using S = decltype(s);
      if constexpr (std::is_integral_v<S>) convert_frame<S, O>(raw, count, h, reinterpret_cast<O*>(dst));
    });
  });
}

bool host_is_little_endian() {
  const std::uint16_t x = 1;
  std::uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

}  // namespace

DicomHeader read_dicom_header(const std::string& path) {
  DicomHeader h;
  try {
    FileWindow w(path);
    if (!w.ok()) {
      h.error = "cannot open file";
      return h;
    }
    Parser(w, h, path).run();
  } catch (const std::bad_alloc&) {
    h.error = "out of memory while parsing";
  } catch (const std::exception& ex) {
    h.error = ex.what();
  }
  return h;
}

std::vector<DicomHeader> read_dicom_headers(const std::vector<std::string>& paths, int threads) {
  std::vector<DicomHeader> out(paths.size());
  parallel_for(paths.size(), threads, 4, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) out[i] = read_dicom_header(paths[i]);
  });
  return out;
}

int dicom_stored_dtype(const DicomHeader& h) {
  if (!pixel_layout_supported(h)) return -1;
  const bool s = h.pixel_representation == 1;
  switch (h.bits_allocated) {
    case 8: return static_cast<int>(s ? DType::i8 : DType::u8);
    case 16: return static_cast<int>(s ? DType::i16 : DType::u16);
    case 32: return static_cast<int>(s ? DType::i32 : DType::u32);
    default: return -1;
  }
}

int dicom_output_dtype(const DicomHeader& h) {
  const int stored_i = dicom_stored_dtype(h);
  if (stored_i < 0) return -1;
  const DType stored = static_cast<DType>(stored_i);
  const Rescale kind = rescale_kind(h);
  if (kind == Rescale::identity) return stored_i;
  DType out;
  if (kind == Rescale::real) {
    out = DType::f64;
  } else {
    const int bs = h.bits_stored;
    const bool sgn = h.pixel_representation == 1;
    const double pmin = sgn ? -std::ldexp(1.0, bs - 1) : 0.0;
    const double pmax = sgn ? std::ldexp(1.0, bs - 1) - 1.0 : std::ldexp(1.0, bs) - 1.0;
    const double lo = h.slope >= 0 ? pmin : pmax;
    const double hi = h.slope >= 0 ? pmax : pmin;
    const double mn = h.slope * lo + h.intercept;
    const double mx = h.slope * hi + h.intercept;
    if (mn >= 0) {
      if (mx <= 255.0) out = DType::u8;
      else if (mx <= 65535.0) out = DType::u16;
      else if (mx <= 4294967295.0) out = DType::u32;
      else return -1;
    } else {
      if (mx <= 127.0 && mn >= -128.0) out = DType::i8;
      else if (mx <= 32767.0 && mn >= -32768.0) out = DType::i16;
      else if (mx <= 2147483647.0 && mn >= -2147483648.0) out = DType::i32;
      else return -1;
    }
  }
  if (gdcm_rank(out) < gdcm_rank(stored)) return -1;  // ITK refuses this file
  return static_cast<int>(out);
}

bool dicom_compressed_readable(const DicomHeader& h) {
  return h.error.empty() && h.encapsulated && h.little_endian &&
         (h.bits_allocated == 8 || h.bits_allocated == 16) &&
         dicom_codec_reason(h.transfer_syntax, h.bits_stored).empty();
}

bool dicom_fast_readable(const DicomHeader& h) {
  if (!h.error.empty() || !(h.uncompressed_native || dicom_compressed_readable(h)) ||
      h.number_of_frames > 1)
    return false;
  const std::string& sop =
      h.media_storage_sop_class_uid.empty() ? h.sop_class_uid : h.media_storage_sop_class_uid;
  if (!h.sop_class_uid.empty() && h.sop_class_uid != sop) return false;
  if (sop != "1.2.840.10008.5.1.4.1.1.2" && sop != "1.2.840.10008.5.1.4.1.1.4" &&
      sop != "1.2.840.10008.5.1.4.1.1.128")
    return false;
  // MONOCHROME1 is inverted by SimpleITK's reader; leave it (and colour) to it.
  if (h.photometric != "MONOCHROME2") return false;
  if (dicom_output_dtype(h) < 0) return false;
  if (!h.has_ipp || !h.has_iop || !h.has_pixel_spacing) return false;
  const double* v = h.iop;
  const double n1 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
  const double n2 = v[3] * v[3] + v[4] * v[4] + v[5] * v[5];
  const double dot = v[0] * v[3] + v[1] * v[4] + v[2] * v[5];
  if (!(std::fabs(n1 - 1) < 1e-3 && std::fabs(n2 - 1) < 1e-3 && std::fabs(dot) < 1e-3))
    return false;
  return h.pixel_spacing[0] > 0 && h.pixel_spacing[1] > 0 && std::isfinite(h.pixel_spacing[0]) &&
         std::isfinite(h.pixel_spacing[1]);
}

namespace {

// Validates every file and fills the first frame index and byte count of each.
void plan_pixels(const std::vector<std::string>& paths, const std::vector<DicomHeader>& headers,
                 std::vector<std::int64_t>& first, std::vector<std::int64_t>& nbytes) {
  if (paths.size() != headers.size())
    throw std::invalid_argument("read_dicom_pixels: paths and headers differ in length");
  first.assign(paths.size() + 1, 0);
  nbytes.assign(paths.size(), 0);
  if (paths.empty()) return;
  const std::int64_t rows = headers[0].rows, cols = headers[0].cols;
  const std::int64_t frame = rows * cols;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const DicomHeader& h = headers[i];
    const std::string& p = paths[i];
    if (!h.error.empty()) throw FileError(p, h.error);
    if (!h.has_pixel_data) throw FileError(p, "no pixel data");
    const bool compressed = h.encapsulated;
    if (compressed) {
      const std::string why = h.little_endian
                                  ? dicom_codec_reason(h.transfer_syntax, h.bits_stored)
                                  : std::string("big-endian encapsulated pixel data");
      if (!why.empty()) throw FileError(p, "compressed pixel data: " + why);
      if (h.bits_allocated != 8 && h.bits_allocated != 16)
        throw FileError(p, "compressed pixel data with BitsAllocated " +
                               std::to_string(h.bits_allocated) + " (8 or 16 supported)");
    } else if (!h.uncompressed_native) {
      throw FileError(p, "pixel data is not uncompressed little endian (transfer syntax " +
                             h.transfer_syntax + ")");
    }
    if (h.rows != rows || h.cols != cols || rows <= 0 || cols <= 0)
      throw FileError(p, "image is " + std::to_string(h.rows) + " x " + std::to_string(h.cols) +
                             " pixels, expected " + std::to_string(rows) + " x " +
                             std::to_string(cols));
    if (dicom_stored_dtype(h) < 0)
      throw std::runtime_error(
          p + ": unsupported pixel layout (SamplesPerPixel " + std::to_string(h.samples_per_pixel) +
          ", BitsAllocated " + std::to_string(h.bits_allocated) + ", BitsStored " +
          std::to_string(h.bits_stored) + ", HighBit " + std::to_string(h.high_bit) +
          ", PixelRepresentation " + std::to_string(h.pixel_representation) + ")");
    if (dicom_output_dtype(h) < 0)
      throw FileError(p, "unsupported rescale slope/intercept for the stored type");
    const std::int64_t frames = std::max(1, h.number_of_frames);
    const std::int64_t per_frame = frame * (h.bits_allocated / 8);  // <= 2^32 * 4
    if (frames > (std::int64_t(1) << 36) / per_frame)  // pixel data lengths are < 2^32
      throw FileError(p, "implausible number of frames (" + std::to_string(frames) + ")");
    const std::int64_t need = frames * per_frame;
    // A compressed frame is at least one 8-byte item header and 2 bytes: the file size
    // bounds the frame count (and so what the caller allocates for a tiny, lying file).
    if (compressed && frames > (h.file_size - h.pixel_offset) / 10)
      throw FileError(p, std::to_string(frames) + " frames cannot fit in the " +
                             std::to_string(h.file_size - h.pixel_offset) +
                             " bytes of compressed pixel data (truncated file or bogus "
                             "NumberOfFrames)");
    if (!compressed && h.pixel_length < need)
      throw FileError(p, "pixel data holds " + std::to_string(h.pixel_length) + " bytes but " +
                             std::to_string(rows) + " x " + std::to_string(cols) + " x " +
                             std::to_string(frames) + " x " + std::to_string(h.bits_allocated / 8) +
                             " = " + std::to_string(need) + " are needed (truncated pixel data)");
    nbytes[i] = need;
    first[i + 1] = first[i] + frames;
  }
}

}  // namespace

std::int64_t dicom_total_frames(const std::vector<std::string>& paths,
                                const std::vector<DicomHeader>& headers) {
  std::vector<std::int64_t> first, nbytes;
  plan_pixels(paths, headers, first, nbytes);
  return first.back();
}

namespace {

// Bytes [offset, end of file) of `p`: the encapsulated items, or the native pixel data.
std::vector<std::uint8_t> read_from(const std::string& p, std::int64_t offset) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw FileError(p, "cannot open file");
  in.seekg(0, std::ios::end);
  const std::int64_t size = static_cast<std::int64_t>(in.tellg());
  if (offset < 0 || size < offset) throw FileError(p, "file is truncated before its pixel data");
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(size - offset));
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  if (in.gcount() != static_cast<std::streamsize>(buf.size()))
    throw FileError(p, "could not read the pixel data");
  return buf;
}

// A series with compressed files: read and split every file (one file a task),
// then decode every frame (one frame a task) into its slice of `out`.
void read_pixels_compressed(const std::vector<std::string>& paths,
                            const std::vector<DicomHeader>& headers, void* out, DType od,
                            const std::vector<std::int64_t>& first,
                            const std::vector<std::int64_t>& nbytes, int threads) {
  const std::size_t nf = paths.size();
  const std::int64_t frame = std::int64_t(headers[0].rows) * headers[0].cols;
  std::vector<std::vector<std::uint8_t>> data(nf);
  std::vector<std::vector<std::vector<Fragment>>> frames(nf);
  parallel_for(nf, threads, 1, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const DicomHeader& h = headers[i];
      if (h.deflate_offset >= 0) {  // inflate again, keep the pixel data
        std::vector<std::uint8_t> all;
        std::string error;
        if (!inflate_dataset(paths[i], h.deflate_offset, all, error)) throw FileError(paths[i], error);
        if (h.pixel_offset < 0 || h.pixel_offset > static_cast<std::int64_t>(all.size()))
          throw FileError(paths[i], "deflated dataset changed since its header was read");
        data[i].assign(all.begin() + h.pixel_offset, all.end());
      } else {
        data[i] = read_from(paths[i], h.pixel_offset);
      }
      if (!h.encapsulated) {
        if (static_cast<std::int64_t>(data[i].size()) < nbytes[i])
          throw FileError(paths[i], "file is truncated: pixel data needs " +
                                        std::to_string(nbytes[i]) + " bytes");
        continue;
      }
      try {
        frames[i] = split_encapsulated(data[i].data(), data[i].size(), first[i + 1] - first[i],
                                       dicom_codec(h.transfer_syntax));
      } catch (const CodecError& ex) {
        throw FileError(paths[i], ex.what());
      }
    }
  });
  const auto total = static_cast<std::size_t>(first.back());
  const std::size_t osize = dtype_size(od);
  parallel_for(total, threads, 1, [&](std::size_t b, std::size_t e) {
    std::vector<std::uint8_t> joined, decoded;
    for (std::size_t g = b; g < e; ++g) {
      const auto i = static_cast<std::size_t>(
          std::upper_bound(first.begin(), first.end(), static_cast<std::int64_t>(g)) -
          first.begin() - 1);
      const DicomHeader& h = headers[i];
      const std::size_t k = g - static_cast<std::size_t>(first[i]);
      const DType sd = static_cast<DType>(dicom_stored_dtype(h));
      const std::size_t in_bytes = static_cast<std::size_t>(h.bits_allocated / 8);
      const std::size_t count = static_cast<std::size_t>(frame);
      std::uint8_t* dst_bytes = static_cast<std::uint8_t*>(out) + g * count * osize;
      const bool direct = sd == od && rescale_kind(h) == Rescale::identity;
      const std::uint8_t* stored;
      if (!h.encapsulated) {
        stored = data[i].data() + k * count * in_bytes;
      } else {
        // Decode straight into the output slice: at its start when the output type is as
        // wide as the stored one (CT: uint16 stored, int16 out), else into its back end,
        // from where the forward conversion below never overwrites a sample it has yet to
        // read (sample i, read before it is written, ends at byte (i + 1) * osize <= the
        // start of sample i + 1). Only a narrower output type goes through a buffer.
        std::uint8_t* target = dst_bytes;
        if (osize > in_bytes) {
          target = dst_bytes + count * (osize - in_bytes);
        } else if (osize < in_bytes) {
          decoded.resize(count * in_bytes);
          target = decoded.data();
        }
        const std::vector<Fragment>& fr = frames[i][k];
        const std::uint8_t* src = data[i].data() + fr[0].offset;
        std::size_t n = fr[0].length;
        if (fr.size() > 1) {  // a frame in several fragments: join them
          joined.clear();
          for (const Fragment& f : fr)
            joined.insert(joined.end(), data[i].begin() + static_cast<std::ptrdiff_t>(f.offset),
                          data[i].begin() + static_cast<std::ptrdiff_t>(f.offset + f.length));
          src = joined.data();
          n = joined.size();
        }
        FrameSpec spec;
        spec.rows = h.rows;
        spec.cols = h.cols;
        spec.bits_allocated = h.bits_allocated;
        spec.bits_stored = h.bits_stored;
        spec.pixel_representation = h.pixel_representation;
        try {
          decode_frame(dicom_codec(h.transfer_syntax), src, n, spec, target);
        } catch (const CodecError& ex) {
          throw FileError(paths[i], "frame " + std::to_string(k) + " (" +
                                        dicom_codec_name(h.transfer_syntax) + "): " + ex.what());
        }
        if (direct && !(h.bits_allocated == 16 && h.bits_stored < 16)) continue;
        stored = target;
      }
      store_frames(sd, od, stored, count, h, dst_bytes);
    }
  });
}

}  // namespace

void read_dicom_pixels(const std::vector<std::string>& paths,
                       const std::vector<DicomHeader>& headers, void* out, int out_dtype,
                       int threads) {
  if (paths.size() != headers.size())
    throw std::invalid_argument("read_dicom_pixels: paths and headers differ in length");
  if (out_dtype < 0 || out_dtype > static_cast<int>(DType::f64))
    throw std::invalid_argument("read_dicom_pixels: bad output element type");
  if (paths.empty()) return;
  if (!host_is_little_endian())
    throw std::runtime_error("read_dicom_pixels: big-endian hosts are not supported");
  const DType od = static_cast<DType>(out_dtype);
  const std::int64_t frame = std::int64_t(headers[0].rows) * headers[0].cols;
  std::vector<std::int64_t> first, nbytes;  // first frame and byte count of each file
  plan_pixels(paths, headers, first, nbytes);
  if (std::any_of(headers.begin(), headers.end(),
                  [](const DicomHeader& h) { return h.encapsulated || h.deflate_offset >= 0; })) {
    read_pixels_compressed(paths, headers, out, od, first, nbytes, threads);
    return;
  }

  parallel_for(paths.size(), threads, 1, [&](std::size_t b, std::size_t e) {
    std::vector<std::uint8_t> buf;
    for (std::size_t i = b; i < e; ++i) {
      const DicomHeader& h = headers[i];
      const std::string& p = paths[i];
      std::ifstream in(p, std::ios::binary);
      if (!in) throw FileError(p, "cannot open file");
      in.seekg(0, std::ios::end);
      const std::int64_t size = static_cast<std::int64_t>(in.tellg());
      if (size < h.pixel_offset + nbytes[i])
        throw FileError(p, "file is truncated: pixel data needs bytes up to " +
                               std::to_string(h.pixel_offset + nbytes[i]) + " but the file has " +
                               std::to_string(size));
      const std::size_t count = static_cast<std::size_t>((first[i + 1] - first[i]) * frame);
      const DType sd = static_cast<DType>(dicom_stored_dtype(h));
      // Same type and no rescale: read straight into the output (then clean
      // the unused bits in place); otherwise through a buffer.
      const bool direct = sd == od && rescale_kind(h) == Rescale::identity;
      std::uint8_t* dst_bytes =
          static_cast<std::uint8_t*>(out) + first[i] * frame * dtype_size(od);
      std::uint8_t* target = dst_bytes;
      if (!direct) {
        buf.resize(static_cast<std::size_t>(nbytes[i]));
        target = buf.data();
      }
      in.seekg(static_cast<std::streamoff>(h.pixel_offset));
      in.read(reinterpret_cast<char*>(target), static_cast<std::streamsize>(nbytes[i]));
      if (in.gcount() != static_cast<std::streamsize>(nbytes[i]))
        throw FileError(p, "could not read the pixel data");
      if (direct && !(h.bits_allocated == 16 && h.bits_stored < 16)) continue;
      store_frames(sd, od, target, count, h, dst_bytes);  // in place when direct
    }
  });
}

}  // namespace neurovfm
