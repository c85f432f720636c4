// HTJ2K (High-Throughput JPEG 2000, ITU T.814) frames: DICOM transfer syntaxes
// 1.2.840.10008.1.2.4.201 (lossless), .202 (lossless, RPCL) and .203 (lossless or
// lossy). OpenJPEG >= 2.5 (NEUROVFM_OPENJPEG_HTJ2K) decodes them through
// decode_jpeg2000: it refused every one of 6000 fuzzed frames it could not decode.
// OpenJPH (NEUROVFM_HAVE_OPENJPH, only with -DNEUROVFM_OPENJPH=ON) decodes a 512 x 512
// CT frame in about half the time (1.5 against 3.0 ms here), but its 0.9 aborts on
// assertions, corrupts its heap or loops forever on about 1% of the same fuzzed
// frames, some of which OpenJPEG's header check passes; the checks below stop the
// loops and truncations seen, not the rest. Without either the syntaxes are reported
// unavailable and the caller falls back to SimpleITK.
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "neurovfm/dicom_codecs.hpp"

#ifdef NEUROVFM_HAVE_OPENJPH
#include <openjph/ojph_arch.h>
#include <openjph/ojph_codestream.h>
#include <openjph/ojph_file.h>
#include <openjph/ojph_mem.h>
#include <openjph/ojph_message.h>
#include <openjph/ojph_params.h>
#endif

namespace neurovfm::codecs {

bool have_openjph() {
#ifdef NEUROVFM_HAVE_OPENJPH
  return true;
#else
  return false;
#endif
}

bool have_htj2k() {
#if defined(NEUROVFM_HAVE_OPENJPH) || defined(NEUROVFM_OPENJPEG_HTJ2K)
  return true;
#else
  return false;
#endif
}

const char* htj2k_library() {
#if defined(NEUROVFM_HAVE_OPENJPH)
  return "OpenJPH";
#elif defined(NEUROVFM_OPENJPEG_HTJ2K)
  return "OpenJPEG";
#else
  return "";
#endif
}

#ifdef NEUROVFM_HAVE_OPENJPH
namespace {

// OpenJPH reports errors through one process-wide handler that prints to a stream
// and throws std::runtime_error. configure_error() installs ThrowError (which throws
// CodecError with the message, printing nothing) where the library honours it; 0.9
// (Debian 12) ignores it, so the default handler's streams are also pointed at the
// null device (a null FILE* would crash it) and decode_htj2k turns its exception into
// a CodecError. Warnings and information are dropped. Set once, before the first
// frame; the handlers keep no state, so concurrent frames share them safely.
class ThrowError : public ojph::message_error {
 public:
  void operator()(int code, const char*, int, const char* fmt, ...) override {
    char buf[256];
    std::va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    std::string msg(buf);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08X", static_cast<unsigned>(code));
    throw CodecError("HTJ2K: " + (msg.empty() ? std::string("error ") + hex : msg));
  }
};
class QuietWarning : public ojph::message_warning {
 public:
  void operator()(int, const char*, int, const char*, ...) override {}
};
class QuietInfo : public ojph::message_info {
 public:
  void operator()(int, const char*, int, const char*, ...) override {}
};

void configure_openjph() {
  static std::once_flag once;
  std::call_once(once, [] {
    static ThrowError error;
    static QuietWarning warning;
    static QuietInfo info;
    ojph::configure_error(&error);
    ojph::configure_warning(&warning);
    ojph::configure_info(&info);
#ifdef _WIN32
    std::FILE* sink = std::fopen("NUL", "w");
#else
    std::FILE* sink = std::fopen("/dev/null", "w");
#endif
    if (sink) {  // kept open for the life of the process
      ojph::set_error_stream(sink);
      ojph::set_warning_stream(sink);
      ojph::set_info_stream(sink);
    }
  });
}

// SIZ checked as T.800 A.5.1 requires before OpenJPH sees it: OpenJPH 0.9 loops
// forever on some impossible ones (a tile grid offset past the image offset).
void check_siz(const std::uint8_t* src, std::size_t n) {
  auto be16 = [&](std::size_t i) { return static_cast<std::uint32_t>((src[i] << 8) | src[i + 1]); };
  auto be32 = [&](std::size_t i) { return (be16(i) << 16) | be16(i + 2); };
  if (n < 2 + 41 + 3) throw CodecError("HTJ2K: codestream ends inside its SIZ marker");
  const std::uint32_t lsiz = be16(4), csiz = be16(40);
  if (csiz != 1)
    throw CodecError("HTJ2K: " + std::to_string(csiz) + " components (a scalar image has 1)");
  if (lsiz != 38 + 3 * csiz) throw CodecError("HTJ2K: bad SIZ marker length");
  const std::uint32_t x1 = be32(8), y1 = be32(12), x0 = be32(16), y0 = be32(20);
  const std::uint32_t tw = be32(24), th = be32(28), tx0 = be32(32), ty0 = be32(36);
  const int ssiz = src[42], xr = src[43], yr = src[44];
  if (x1 <= x0 || y1 <= y0 || tw == 0 || th == 0 || tx0 > x0 || ty0 > y0 ||
      std::uint64_t(tx0) + tw <= x0 || std::uint64_t(ty0) + th <= y0 || (ssiz & 0x7F) > 37 ||
      xr != 1 || yr != 1)
    throw CodecError("HTJ2K: impossible image or tile geometry in the SIZ marker");
}

// The first tile-part of a codestream must fit in the bytes given: OpenJPH reads a
// truncated one as far as it goes and fills the rest with zeros, so a cut frame is
// refused here (as OpenJPEG's strict mode does). Walks SOT markers: (FF90, Lsot=10,
// Isot, Psot, TPsot, TNsot), Psot the tile-part's length from its SOT (0: to EOC).
void check_tile_parts(const std::uint8_t* src, std::size_t n) {
  auto be16 = [&](std::size_t i) { return static_cast<std::size_t>((src[i] << 8) | src[i + 1]); };
  std::size_t pos = 2;  // after SOC
  // main header: marker segments up to the first SOT
  while (true) {
    if (pos + 4 > n) throw CodecError("HTJ2K: codestream ends inside its main header");
    if (src[pos] != 0xFF) throw CodecError("HTJ2K: bad marker in the main header");
    if (src[pos + 1] == 0x90) break;
    pos += 2 + be16(pos + 2);
  }
  bool eoc = false;
  while (pos + 2 <= n) {
    if (src[pos] == 0xFF && src[pos + 1] == 0xD9) {
      eoc = true;
      break;
    }
    if (src[pos] != 0xFF || src[pos + 1] != 0x90 || pos + 12 > n)
      throw CodecError("HTJ2K: codestream is truncated or corrupt (no tile-part at byte " +
                       std::to_string(pos) + ")");
    const std::size_t psot = (be16(pos + 6) << 16) | be16(pos + 8);
    if (psot == 0) return;  // the last tile-part runs to EOC
    if (psot < 14 || psot > n - pos)
      throw CodecError("HTJ2K: tile-part of " + std::to_string(psot) + " bytes at byte " +
                       std::to_string(pos) + " runs past the end of the frame (" +
                       std::to_string(n) + " bytes): truncated");
    pos += psot;
  }
  if (!eoc) throw CodecError("HTJ2K: codestream is truncated (no end-of-codestream marker)");
}

// Decodes one checked codestream into dst (the frame's samples).
void decode_openjph(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                    std::uint8_t* dst) {
  ojph::mem_infile file;
  file.open(src, n);
  ojph::codestream cs;
  cs.read_headers(&file);
  ojph::param_siz siz = cs.access_siz();
  const ojph::point ext = siz.get_image_extent(), off = siz.get_image_offset();
  const int comps = static_cast<int>(siz.get_num_components());
  if (comps != 1)
    throw CodecError("HTJ2K: " + std::to_string(comps) + " components (a scalar image has 1)");
  const long long w = static_cast<long long>(ext.x) - off.x,
                  h = static_cast<long long>(ext.y) - off.y;
  if (w != spec.cols || h != spec.rows)
    throw CodecError("HTJ2K: image is " + std::to_string(w) + " x " + std::to_string(h) +
                     ", the header says " + std::to_string(spec.cols) + " x " +
                     std::to_string(spec.rows));
  const ojph::point ds = siz.get_downsampling(0);
  if (ds.x != 1 || ds.y != 1) throw CodecError("HTJ2K: subsampled component");
  const int prec = static_cast<int>(siz.get_bit_depth(0));
  if (prec < 1 || prec > spec.bits_allocated)
    throw CodecError("HTJ2K: precision " + std::to_string(prec) + " for BitsAllocated " +
                     std::to_string(spec.bits_allocated));
  // Samples outside the component's range (a lossy frame's overshoot, or a stream
  // that does not fit its own SIZ) are clamped to it, as OpenJPEG (and so SimpleITK)
  // does; OpenJPH passes them through.
  const bool sgnd = siz.is_signed(0);
  const ojph::si32 lo = sgnd ? -(ojph::si32(1) << (prec - 1)) : 0;
  const ojph::si32 hi = sgnd ? (ojph::si32(1) << (prec - 1)) - 1 : (ojph::si32(1) << prec) - 1;
  cs.set_planar(false);
  cs.create();  // reads the tile data; its size is bounded by the frame checked above
  const auto cols = static_cast<std::size_t>(spec.cols);
  for (int y = 0; y < spec.rows; ++y) {
    ojph::ui32 comp = 0;
    ojph::line_buf* line = cs.pull(comp);
    if (!line || comp != 0 || line->size < cols || !line->i32)
      throw CodecError("HTJ2K: decoder returned no line " + std::to_string(y));
    const ojph::si32* p = line->i32;
    if (spec.bits_allocated == 8) {
      std::uint8_t* o = dst + static_cast<std::size_t>(y) * cols;
      for (std::size_t x = 0; x < cols; ++x)
        o[x] = static_cast<std::uint8_t>(std::min(std::max(p[x], lo), hi));
    } else {
      std::uint8_t* o = dst + static_cast<std::size_t>(y) * cols * 2;
      for (std::size_t x = 0; x < cols; ++x) {
        const auto v = static_cast<std::uint16_t>(std::min(std::max(p[x], lo), hi));
        std::memcpy(o + 2 * x, &v, 2);
      }
    }
  }
  cs.close();
}

}  // namespace
#endif

void decode_htj2k([[maybe_unused]] const std::uint8_t* src, [[maybe_unused]] std::size_t n,
                  [[maybe_unused]] const FrameSpec& spec, [[maybe_unused]] std::uint8_t* dst) {
#if defined(NEUROVFM_HAVE_OPENJPH)
  if (n < 4 || src[0] != 0xFF || src[1] != 0x4F || src[2] != 0xFF || src[3] != 0x51) {
#ifdef NEUROVFM_OPENJPEG_HTJ2K
    // not a bare codestream (a JP2/JPH file wrapper?): OpenJPEG reads those
    if (n >= 12 && src[3] == 12 && src[4] == 'j' && src[5] == 'P') {
      decode_jpeg2000(src, n, spec, dst);
      return;
    }
#endif
    throw CodecError("HTJ2K: no codestream (SOC/SIZ markers)");
  }
  configure_openjph();
  check_siz(src, n);
  check_tile_parts(src, n);
  try {
    decode_openjph(src, n, spec, dst);
  } catch (const CodecError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {  // OpenJPH's own error (its message went to the sink)
    throw CodecError(std::string("HTJ2K: corrupt or unsupported codestream (OpenJPH: ") + e.what() +
                     ")");
  }
#elif defined(NEUROVFM_OPENJPEG_HTJ2K)
  // OpenJPEG >= 2.5 reads HT code-blocks in the same codestream syntax.
  try {
    decode_jpeg2000(src, n, spec, dst);
  } catch (const CodecError& e) {
    std::string what = e.what();
    if (what.rfind("JPEG 2000", 0) == 0) what = "HTJ2K" + what.substr(9);
    throw CodecError(what);
  }
#else
  throw CodecError("this build has no HTJ2K decoder (neither OpenJPH nor OpenJPEG >= 2.5 found)");
#endif
}

}  // namespace neurovfm::codecs
