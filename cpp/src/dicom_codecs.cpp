// The library's own decoders (RLE Lossless, JPEG Lossless process 14), the
// encapsulated pixel data parser and the dispatch. See dicom_codecs.hpp.
#include "neurovfm/dicom_codecs.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace neurovfm {
namespace {

inline std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
         (std::uint32_t(p[3]) << 24);
}
inline std::uint16_t le16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

void check_spec(const FrameSpec& s) {
  if (s.rows <= 0 || s.cols <= 0) throw CodecError("frame has no pixels");
  if (s.bits_allocated != 8 && s.bits_allocated != 16)
    throw CodecError("BitsAllocated " + std::to_string(s.bits_allocated) +
                     " is not supported for compressed pixel data");
}

inline std::size_t frame_pixels(const FrameSpec& s) {
  return static_cast<std::size_t>(s.rows) * static_cast<std::size_t>(s.cols);
}

}  // namespace

// ---------------------------------------------------------------------------
// Transfer syntaxes.

DicomCodec dicom_codec(const std::string& ts) {
  if (ts == "1.2.840.10008.1.2.5") return DicomCodec::rle;
  if (ts == "1.2.840.10008.1.2.4.80" || ts == "1.2.840.10008.1.2.4.81") return DicomCodec::jpeg_ls;
  if (ts == "1.2.840.10008.1.2.4.90" || ts == "1.2.840.10008.1.2.4.91") return DicomCodec::jpeg2000;
  if (ts == "1.2.840.10008.1.2.4.57" || ts == "1.2.840.10008.1.2.4.70")
    return DicomCodec::jpeg_lossless;
  if (ts == "1.2.840.10008.1.2.4.50" || ts == "1.2.840.10008.1.2.4.51")
    return DicomCodec::jpeg_lossy;
  if (ts == "1.2.840.10008.1.2.4.201" || ts == "1.2.840.10008.1.2.4.202" ||
      ts == "1.2.840.10008.1.2.4.203")
    return DicomCodec::htj2k;
  return DicomCodec::none;
}

std::string dicom_codec_name(const std::string& ts) {
  switch (dicom_codec(ts)) {
    case DicomCodec::rle: return "RLE Lossless";
    case DicomCodec::jpeg_ls:
      return ts == "1.2.840.10008.1.2.4.80" ? "JPEG-LS lossless" : "JPEG-LS near-lossless";
    case DicomCodec::jpeg2000:
      return ts == "1.2.840.10008.1.2.4.90" ? "JPEG 2000 lossless" : "JPEG 2000";
    case DicomCodec::jpeg_lossless:
      return ts == "1.2.840.10008.1.2.4.70" ? "JPEG Lossless SV1" : "JPEG Lossless";
    case DicomCodec::jpeg_lossy:
      return ts == "1.2.840.10008.1.2.4.50" ? "JPEG baseline" : "JPEG extended";
    case DicomCodec::htj2k:
      if (ts == "1.2.840.10008.1.2.4.201") return "HTJ2K lossless";
      if (ts == "1.2.840.10008.1.2.4.202") return "HTJ2K lossless RPCL";
      return "HTJ2K";
    case DicomCodec::none: break;
  }
  return "";
}

std::string dicom_codec_reason(const std::string& ts, int bits_stored) {
  switch (dicom_codec(ts)) {
    case DicomCodec::rle:
    case DicomCodec::jpeg_lossless: return "";
    case DicomCodec::jpeg_ls:
      return codecs::have_charls() ? "" : "this build has no JPEG-LS decoder (CharLS not found)";
    case DicomCodec::jpeg2000:
      return codecs::have_openjpeg() ? ""
                                     : "this build has no JPEG 2000 decoder (OpenJPEG not found)";
    case DicomCodec::jpeg_lossy:
      if (!codecs::have_libjpeg()) return "this build has no JPEG decoder (libjpeg not found)";
      if (bits_stored > codecs::libjpeg_max_precision())
        return std::to_string(bits_stored) + "-bit lossy JPEG: the linked libjpeg decodes " +
               std::to_string(codecs::libjpeg_max_precision()) + "-bit samples only";
      return "";
    case DicomCodec::htj2k:
      return codecs::have_htj2k()
                 ? ""
                 : "this build has no HTJ2K decoder (neither OpenJPH nor OpenJPEG >= 2.5 found)";
    case DicomCodec::none: break;
  }
  return ts.empty() ? "no transfer syntax" : "transfer syntax " + ts + " is not decoded here";
}

// ---------------------------------------------------------------------------
// Encapsulated pixel data.

std::vector<std::vector<Fragment>> split_encapsulated(const std::uint8_t* data, std::size_t n,
                                                      std::int64_t frames, DicomCodec codec) {
  if (frames < 1) throw CodecError("no frames");
  // Items: (FFFE,E000) length value; ends at (FFFE,E0DD).
  std::size_t pos = 0;
  bool first = true, delimited = false;
  std::vector<std::uint32_t> bot;
  std::vector<Fragment> frags;
  std::vector<std::size_t> item_pos;  // offset of each fragment's item header
  std::size_t first_item = 0;
  while (pos + 8 <= n) {
    const std::uint16_t g = le16(data + pos), e = le16(data + pos + 2);
    const std::uint32_t len = le32(data + pos + 4);
    if (g == 0xFFFE && e == 0xE0DD) {
      delimited = true;
      break;
    }
    if (g != 0xFFFE || e != 0xE000)
      throw CodecError("encapsulated pixel data: expected an item at byte " + std::to_string(pos) +
                       " of the pixel data");
    if (len == 0xFFFFFFFFu)
      throw CodecError("encapsulated pixel data: fragment of undefined length");
    if (len > n - pos - 8)
      throw CodecError("encapsulated pixel data: fragment " + std::to_string(frags.size()) +
                       " claims " + std::to_string(len) + " bytes but only " +
                       std::to_string(n - pos - 8) + " remain (truncated file)");
    if (first) {
      if (len % 4 != 0) throw CodecError("basic offset table length is not a multiple of 4");
      for (std::uint32_t i = 0; i < len; i += 4) bot.push_back(le32(data + pos + 8 + i));
      first = false;
      first_item = pos + 8 + len;
    } else {
      item_pos.push_back(pos - first_item);
      frags.push_back({pos + 8, len});
    }
    pos += 8 + static_cast<std::size_t>(len);
  }
  if (!delimited)
    throw CodecError("encapsulated pixel data: no sequence delimiter (truncated file)");
  if (frags.empty()) throw CodecError("encapsulated pixel data holds no fragments");

  std::vector<std::vector<Fragment>> out;
  const auto nframes = static_cast<std::size_t>(frames);
  if (!bot.empty() && !(frames == 1 && bot.size() == 1 && bot[0] == 0)) {
    if (bot.size() != nframes)
      throw CodecError("basic offset table has " + std::to_string(bot.size()) + " entries for " +
                       std::to_string(frames) + " frames");
    if (bot[0] != 0) throw CodecError("basic offset table does not start at 0");
    std::size_t k = 0;
    for (std::size_t f = 0; f < nframes; ++f) {
      const std::size_t end = f + 1 < nframes ? bot[f + 1] : SIZE_MAX;
      if (k >= frags.size() || item_pos[k] != bot[f])
        throw CodecError("basic offset table entry " + std::to_string(f) +
                         " does not point at a fragment");
      std::vector<Fragment> fr;
      while (k < frags.size() && item_pos[k] < end) fr.push_back(frags[k++]);
      out.push_back(std::move(fr));
    }
    return out;
  }
  if (nframes == 1) {
    out.push_back(frags);
    return out;
  }
  if (frags.size() == nframes) {
    for (const Fragment& f : frags) out.push_back({f});
    return out;
  }
  const bool jpeg = codec == DicomCodec::jpeg_lossless || codec == DicomCodec::jpeg_lossy ||
                    codec == DicomCodec::jpeg_ls;
  if (jpeg && frags.size() > nframes) {
    std::vector<Fragment> cur;
    for (const Fragment& f : frags) {
      cur.push_back(f);
      const std::uint8_t* p = data + f.offset;
      std::size_t l = f.length;
      while (l > 2 && p[l - 1] == 0) --l;  // padding to even length
      if (l >= 2 && p[l - 2] == 0xFF && p[l - 1] == 0xD9) {
        out.push_back(std::move(cur));
        cur.clear();
      }
    }
    if (!cur.empty()) out.push_back(std::move(cur));
    if (out.size() == nframes) return out;
  }
  throw CodecError("cannot tell the " + std::to_string(frames) + " frames apart among " +
                   std::to_string(frags.size()) + " fragments (empty basic offset table)");
}

// ---------------------------------------------------------------------------
// RLE Lossless (PS3.5 Annex G): a 64-byte header of segment offsets, each
// segment a PackBits stream of one byte plane, most significant byte first.

namespace codecs {

void decode_rle(const std::uint8_t* src, std::size_t n, const FrameSpec& spec, std::uint8_t* dst) {
  check_spec(spec);
  const int bytes = spec.bits_allocated / 8;
  const std::size_t npix = frame_pixels(spec);
  if (n < 64) throw CodecError("RLE: header is " + std::to_string(n) + " bytes, 64 needed");
  const std::uint32_t nseg = le32(src);
  if (nseg != static_cast<std::uint32_t>(bytes))
    throw CodecError("RLE: " + std::to_string(nseg) + " segments, expected " +
                     std::to_string(bytes) + " for BitsAllocated " +
                     std::to_string(spec.bits_allocated));
  std::array<std::size_t, 16> off{};
  for (std::uint32_t i = 0; i < nseg; ++i) {
    off[i] = le32(src + 4 + 4 * i);
    if (off[i] < 64 || off[i] > n || (i > 0 && off[i] < off[i - 1]))
      throw CodecError("RLE: segment " + std::to_string(i) + " offset " + std::to_string(off[i]) +
                       " is outside the frame (" + std::to_string(n) + " bytes) or out of order");
  }
  off[nseg] = n;
  for (std::uint32_t s = 0; s < nseg; ++s) {
    // Segment s holds byte (bytes - 1 - s) of each little-endian sample.
    const int byte = bytes - 1 - static_cast<int>(s);
    const std::uint8_t* p = src + off[s];
    const std::uint8_t* const end = src + off[s + 1];
    std::size_t i = 0;
    while (i < npix) {
      if (p >= end)
        throw CodecError("RLE: segment " + std::to_string(s) + " ends after " + std::to_string(i) +
                         " of " + std::to_string(npix) + " bytes (truncated or corrupt)");
      const int c = static_cast<std::int8_t>(*p++);
      if (c >= 0) {  // literal run of c + 1 bytes
        const std::size_t len = static_cast<std::size_t>(c) + 1;
        if (static_cast<std::size_t>(end - p) < len)
          throw CodecError("RLE: literal run past the end of segment " + std::to_string(s));
        const std::size_t take = std::min(len, npix - i);
        for (std::size_t k = 0; k < take; ++k) dst[(i + k) * bytes + byte] = p[k];
        p += len;
        i += take;
      } else if (c != -128) {  // replicate the next byte 1 - c times
        if (p >= end)
          throw CodecError("RLE: replicate run past the end of segment " + std::to_string(s));
        const std::uint8_t v = *p++;
        const std::size_t take = std::min(static_cast<std::size_t>(1 - c), npix - i);
        for (std::size_t k = 0; k < take; ++k) dst[(i + k) * bytes + byte] = v;
        i += take;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// JPEG Lossless, process 14 (ITU T.81 Annex H), one component.

namespace {

struct Huffman {
  bool defined = false;
  // Fast lookup on the next kLook bits: length (0: longer code) and symbol.
  static constexpr int kLook = 9;
  std::array<std::uint8_t, 1 << kLook> look_len{};
  std::array<std::uint8_t, 1 << kLook> look_sym{};
  std::array<std::int32_t, 18> maxcode{};  // per length, -1 when none
  std::array<std::int32_t, 17> valptr{};
  std::array<std::int32_t, 17> mincode{};
  std::array<std::uint8_t, 256> vals{};
};

void build_huffman(Huffman& h, const std::uint8_t* counts, const std::uint8_t* vals, int nvals) {
  h = Huffman{};
  std::memcpy(h.vals.data(), vals, static_cast<std::size_t>(nvals));
  std::int32_t code = 0;
  int k = 0;
  for (int l = 1; l <= 16; ++l) {
    const int c = counts[l - 1];
    h.valptr[l] = k;
    h.mincode[l] = code;
    for (int i = 0; i < c; ++i, ++k, ++code) {
      if (code >= (1 << l)) throw CodecError("JPEG: invalid Huffman table (code overflow)");
      if (l <= Huffman::kLook) {
        const int shift = Huffman::kLook - l;
        for (int j = 0; j < (1 << shift); ++j) {
          h.look_len[static_cast<std::size_t>((code << shift) | j)] = static_cast<std::uint8_t>(l);
          h.look_sym[static_cast<std::size_t>((code << shift) | j)] = vals[k];
        }
      }
    }
    h.maxcode[l] = c ? code - 1 : -1;
    code <<= 1;
  }
  h.maxcode[17] = 0x7FFFFFFF;
  h.defined = true;
}

// Entropy-coded data reader: removes stuffed zero bytes, stops at a marker.
// Bits past the data read as zeros but are counted, so a frame that needs
// them is refused as truncated.
class BitReader {
 public:
  BitReader(const std::uint8_t* p, std::size_t n, std::size_t pos) : p_(p), n_(n), pos_(pos) {}

  std::size_t pos() const { return pos_; }

  std::uint32_t peek(int k) {  // k <= 25
    if (bits_ < k) fill();
    return static_cast<std::uint32_t>(acc_ >> (bits_ - k)) & ((1u << k) - 1u);
  }
  void skip(int k) {
    bits_ -= k;
    if (bits_ < padded_bits_) throw CodecError("JPEG: entropy-coded data ends early (truncated)");
  }
  std::uint32_t get(int k) {
    if (k == 0) return 0;
    const std::uint32_t v = peek(k);
    skip(k);
    return v;
  }
  // Drops the bits left in the current byte and any buffered bytes, for a restart marker.
  void reset_at(std::size_t pos) {
    pos_ = pos;
    acc_ = 0;
    bits_ = 0;
    padded_bits_ = 0;
    at_marker_ = false;
  }
  // Where the entropy-coded segment ends (the position of the marker), once reached.
  std::size_t marker_pos() {
    while (!at_marker_) {
      if (pos_ >= n_) return n_;
      if (p_[pos_] == 0xFF && pos_ + 1 < n_ && p_[pos_ + 1] != 0x00) return pos_;
      pos_ += p_[pos_] == 0xFF ? 2 : 1;
    }
    return pos_;
  }

 private:
  void fill() {
    while (bits_ <= 56) {
      std::uint32_t b = 0;
      if (!at_marker_ && pos_ < n_) {
        b = p_[pos_];
        if (b != 0xFF) {
          ++pos_;
        } else if (pos_ + 1 < n_ && p_[pos_ + 1] == 0x00) {
          pos_ += 2;  // stuffed zero
        } else {
          at_marker_ = true;  // a marker (or the end): padding from here
          b = 0;
          padded_bits_ += 8;
        }
      } else {
        padded_bits_ += 8;
      }
      acc_ = (acc_ << 8) | b;
      bits_ += 8;
    }
  }
  const std::uint8_t* p_;
  std::size_t n_, pos_;
  std::uint64_t acc_ = 0;
  int bits_ = 0;
  int padded_bits_ = 0;  // how many of the low bits_ are padding
  bool at_marker_ = false;
};

inline int decode_symbol(BitReader& br, const Huffman& h) {
  const std::uint32_t look = br.peek(Huffman::kLook);
  const int l = h.look_len[look];
  if (l) {
    br.skip(l);
    return h.look_sym[look];
  }
  std::int32_t code = static_cast<std::int32_t>(br.peek(16));
  for (int len = Huffman::kLook + 1; len <= 16; ++len) {
    const std::int32_t c = code >> (16 - len);
    if (h.maxcode[len] >= 0 && c <= h.maxcode[len]) {
      br.skip(len);
      const std::int32_t idx = h.valptr[len] + c - h.mincode[len];
      if (idx < 0 || idx > 255) throw CodecError("JPEG: corrupt Huffman code");
      return h.vals[static_cast<std::size_t>(idx)];
    }
  }
  throw CodecError("JPEG: corrupt Huffman code");
}

}  // namespace

void decode_jpeg_lossless(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                          std::uint8_t* dst) {
  check_spec(spec);
  if (n < 4 || src[0] != 0xFF || src[1] != 0xD8) throw CodecError("JPEG: no start-of-image marker");
  std::array<Huffman, 4> tables;
  int precision = 0, width = 0, height = 0, comp_id = -1;
  int restart = 0;
  std::size_t pos = 2;
  auto need = [&](std::size_t k) {
    if (k > n - pos) throw CodecError("JPEG: marker segment runs past the end of the data");
  };
  for (;;) {
    // Next marker (fill bytes 0xFF allowed).
    if (pos >= n) throw CodecError("JPEG: no start-of-scan marker");
    if (src[pos] != 0xFF)
      throw CodecError("JPEG: expected a marker at byte " + std::to_string(pos));
    while (pos < n && src[pos] == 0xFF) ++pos;
    if (pos >= n) throw CodecError("JPEG: no start-of-scan marker");
    const std::uint8_t m = src[pos++];
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length
    if (m == 0xD9) throw CodecError("JPEG: end of image before the scan");
    need(2);
    const std::size_t len = static_cast<std::size_t>((src[pos] << 8) | src[pos + 1]);
    if (len < 2) throw CodecError("JPEG: bad marker segment length");
    need(len);
    const std::uint8_t* seg = src + pos + 2;
    const std::size_t slen = len - 2;
    if (m == 0xC3) {  // SOF3: lossless, Huffman
      if (slen < 6) throw CodecError("JPEG: short SOF3 segment");
      precision = seg[0];
      height = (seg[1] << 8) | seg[2];
      width = (seg[3] << 8) | seg[4];
      const int nc = seg[5];
      if (nc != 1)
        throw CodecError("JPEG lossless with " + std::to_string(nc) + " components (1 supported)");
      if (slen < 9) throw CodecError("JPEG: short SOF3 segment");
      comp_id = seg[6];
      if (precision < 2 || precision > 16)
        throw CodecError("JPEG: sample precision " + std::to_string(precision));
    } else if ((m >= 0xC0 && m <= 0xCF) && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      throw CodecError("JPEG: frame type SOF" + std::to_string(m - 0xC0) +
                       " is not lossless Huffman (SOF3)");
    } else if (m == 0xC4) {  // DHT
      std::size_t q = 0;
      while (q < slen) {
        if (slen - q < 17) throw CodecError("JPEG: short DHT segment");
        const int tc = seg[q] >> 4, th = seg[q] & 15;
        if (tc != 0 || th > 3) throw CodecError("JPEG: bad Huffman table class or id");
        int total = 0;
        for (int i = 0; i < 16; ++i) total += seg[q + 1 + i];
        if (total > 256 || slen - q - 17 < static_cast<std::size_t>(total))
          throw CodecError("JPEG: bad DHT segment");
        build_huffman(tables[static_cast<std::size_t>(th)], seg + q + 1, seg + q + 17, total);
        q += 17 + static_cast<std::size_t>(total);
      }
    } else if (m == 0xDD) {  // DRI
      if (slen < 2) throw CodecError("JPEG: short DRI segment");
      restart = (seg[0] << 8) | seg[1];
    } else if (m == 0xDA) {  // SOS
      if (precision == 0) throw CodecError("JPEG: scan before the frame header");
      if (slen < 1 || seg[0] != 1 || slen < 6)
        throw CodecError("JPEG: scan with other than one component");
      if (seg[1] != comp_id) throw CodecError("JPEG: scan component is not the frame's");
      const int td = seg[2] >> 4;
      const int pred = seg[3];
      const int pt = seg[5] & 15;
      if (td > 3 || !tables[static_cast<std::size_t>(td)].defined)
        throw CodecError("JPEG: scan uses an undefined Huffman table");
      if (pred < 1 || pred > 7)
        throw CodecError("JPEG: predictor " + std::to_string(pred) + " (1 to 7 allowed)");
      if (pt >= precision) throw CodecError("JPEG: point transform too large");
      pos += len;
      if (width != spec.cols || height != spec.rows)
        throw CodecError("JPEG: image is " + std::to_string(width) + " x " +
                         std::to_string(height) + ", the header says " + std::to_string(spec.cols) +
                         " x " + std::to_string(spec.rows));
      if (precision > spec.bits_allocated)
        throw CodecError("JPEG: precision " + std::to_string(precision) +
                         " exceeds BitsAllocated " + std::to_string(spec.bits_allocated));
      if (restart && restart % width != 0)
        throw CodecError("JPEG: restart interval not a multiple of the row width");
      const Huffman& h = tables[static_cast<std::size_t>(td)];
      const int W = width, H = height;
      const int mask = (1 << (precision - pt)) - 1;  // sample range before the shift
      const int rows_per_interval = restart ? restart / width : H;
      BitReader br(src, n, pos);
      std::vector<int> prev(static_cast<std::size_t>(W)), cur(static_cast<std::size_t>(W));
      const bool wide = spec.bits_allocated == 16;
      int rows_left = rows_per_interval;
      bool first_row = true;
      for (int y = 0; y < H; ++y) {
        if (rows_left == 0) {  // restart marker expected
          std::size_t mp = br.marker_pos();
          while (mp < n && src[mp] == 0xFF && mp + 1 < n && src[mp + 1] == 0xFF) ++mp;
          if (mp + 1 >= n || src[mp] != 0xFF || src[mp + 1] < 0xD0 || src[mp + 1] > 0xD7)
            throw CodecError("JPEG: missing restart marker at row " + std::to_string(y));
          br.reset_at(mp + 2);
          rows_left = rows_per_interval;
          first_row = true;
        }
        for (int x = 0; x < W; ++x) {
          const int s = decode_symbol(br, h);
          int diff;
          if (s == 0) {
            diff = 0;
          } else if (s == 16) {
            diff = 32768;
          } else if (s < 16) {
            const int v = static_cast<int>(br.get(s));
            diff = v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
          } else {
            throw CodecError("JPEG: difference category " + std::to_string(s));
          }
          int px;
          if (first_row) {
            px = x == 0 ? 1 << (precision - pt - 1) : cur[static_cast<std::size_t>(x - 1)];
          } else if (x == 0) {
            px = prev[0];
          } else {
            const int ra = cur[static_cast<std::size_t>(x - 1)];
            const int rb = prev[static_cast<std::size_t>(x)];
            const int rc = prev[static_cast<std::size_t>(x - 1)];
            switch (pred) {
              case 1: px = ra; break;
              case 2: px = rb; break;
              case 3: px = rc; break;
              case 4: px = ra + rb - rc; break;
              case 5: px = ra + ((rb - rc) >> 1); break;
              case 6: px = rb + ((ra - rc) >> 1); break;
              default: px = (ra + rb) >> 1; break;
            }
          }
          cur[static_cast<std::size_t>(x)] = (px + diff) & 0xFFFF;
        }
        const std::size_t row0 = static_cast<std::size_t>(y) * static_cast<std::size_t>(W);
        for (int x = 0; x < W; ++x) {
          const int v = (cur[static_cast<std::size_t>(x)] & mask) << pt;
          if (wide) {
            const auto u = static_cast<std::uint16_t>(v);
            std::memcpy(dst + 2 * (row0 + static_cast<std::size_t>(x)), &u, 2);
          } else {
            dst[row0 + static_cast<std::size_t>(x)] = static_cast<std::uint8_t>(v);
          }
        }
        std::swap(prev, cur);
        first_row = false;
        --rows_left;
      }
      return;
    }
    // APPn, COM, DQT, DNL, ...: skipped.
    pos += len;
  }
}

}  // namespace codecs

void decode_frame(DicomCodec codec, const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                  std::uint8_t* dst) {
  check_spec(spec);
  switch (codec) {
    case DicomCodec::rle: codecs::decode_rle(src, n, spec, dst); return;
    case DicomCodec::jpeg_lossless: codecs::decode_jpeg_lossless(src, n, spec, dst); return;
    case DicomCodec::jpeg_ls: codecs::decode_jpeg_ls(src, n, spec, dst); return;
    case DicomCodec::jpeg2000: codecs::decode_jpeg2000(src, n, spec, dst); return;
    case DicomCodec::jpeg_lossy: codecs::decode_jpeg_lossy(src, n, spec, dst); return;
    case DicomCodec::htj2k: codecs::decode_htj2k(src, n, spec, dst); return;
    case DicomCodec::none: break;
  }
  throw CodecError("not a compressed transfer syntax");
}

}  // namespace neurovfm
