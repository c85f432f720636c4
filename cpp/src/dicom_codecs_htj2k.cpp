// HTJ2K (High-Throughput JPEG 2000, ITU T.814) frames: DICOM transfer syntaxes
// 1.2.840.10008.1.2.4.201 (lossless), .202 (lossless, RPCL) and .203 (lossless or
// lossy). OpenJPH (NEUROVFM_HAVE_OPENJPH) decodes a 512 x 512 CT frame in less than
// half OpenJPEG 2.5's time here (3.5 against 7.9 ms, bench/bench_compressed.py), but
// its 0.9 trusts its input: it is given only frames in the plain subset that
// openjph_subset() checks, and every other frame goes to OpenJPEG >= 2.5
// (NEUROVFM_OPENJPEG_HTJ2K), which decodes or refuses it. Fuzzed (24000 mutated real
// frames, header and data): no crash, hang or wrong later decode. Without OpenJPH,
// OpenJPEG decodes every frame; without either, the syntaxes are reported unavailable
// and the caller falls back to SimpleITK.
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

// OpenJPH 0.9 trusts its main header: fuzzed SIZ, COD and QCD markers make it abort
// on assertions, corrupt its heap or loop forever (1.5% of 6000 fuzzed frames, every
// one a main-header mutation; none of the frames with corrupt tile data crashed it).
// So it gets only codestreams in the plain subset this checks strictly (T.800 A.5,
// T.814): one component; SIZ geometry possible; CAP (HT), one COD and one QCD that
// agree with each other, COM; one layer, HT code-blocks only, no MCT; tile-parts that
// fit the frame, each SOT followed by SOD; an EOC. Anything else (other markers,
// options, a truncated or corrupt header) returns the reason, and the frame goes to
// OpenJPEG (which decodes or refuses it) or, without it, is refused with that reason.
std::string openjph_subset(const std::uint8_t* src, std::size_t n) {
  auto be16 = [&](std::size_t i) { return static_cast<std::uint32_t>((src[i] << 8) | src[i + 1]); };
  auto be32 = [&](std::size_t i) { return (be16(i) << 16) | be16(i + 2); };
  if (n < 47) return "codestream ends inside its SIZ marker";
  const std::uint32_t lsiz = be16(4), csiz = be16(40);
  if (csiz != 1) return std::to_string(csiz) + " components (a scalar image has 1)";
  if (lsiz != 41) return "bad SIZ marker length";
  const std::uint32_t x1 = be32(8), y1 = be32(12), x0 = be32(16), y0 = be32(20);
  const std::uint32_t tw = be32(24), th = be32(28), tx0 = be32(32), ty0 = be32(36);
  const int ssiz = src[42], xr = src[43], yr = src[44];
  if (x1 <= x0 || y1 <= y0 || tw == 0 || th == 0 || tx0 > x0 || ty0 > y0 ||
      std::uint64_t(tx0) + tw <= x0 || std::uint64_t(ty0) + th <= y0 || (ssiz & 0x7F) > 15 ||
      xr != 1 || yr != 1)
    return "impossible image or tile geometry, or precision, in the SIZ marker";
  const std::uint64_t ntiles =
      ((std::uint64_t(x1) - tx0 + tw - 1) / tw) * ((std::uint64_t(y1) - ty0 + th - 1) / th);
  std::size_t pos = 45;
  bool cap = false;
  int cod = 0, qcd = 0, nl = -1, transform = -1, qstyle = -1;
  std::uint32_t lqcd = 0;
  while (true) {  // main header, up to the first SOT
    if (pos + 4 > n || src[pos] != 0xFF) return "truncated or corrupt main header";
    const int m = src[pos + 1];
    if (m == 0x90) break;
    const std::uint32_t len = be16(pos + 2);
    if (len < 2 || pos + 2 + len > n) return "truncated or corrupt main header";
    const std::size_t v = pos + 4;  // the marker's parameters
    if (m == 0x50) {                // CAP: Pcap must name Part 15 (HT) only, with its Ccap15
      if (cap || len != 8 || be32(v) != 0x00020000u) return "CAP marker other than HTJ2K's";
      cap = true;
    } else if (m == 0x52) {  // COD
      if (cod++ || len < 12) return "COD marker repeated or short";
      const int scod = src[v], prog = src[v + 1], layers = static_cast<int>(be16(v + 2));
      const int mct = src[v + 4];
      nl = src[v + 5];
      const int xcb = src[v + 6] + 2, ycb = src[v + 7] + 2, style = src[v + 8];
      transform = src[v + 9];
      const bool precincts = scod & 1;
      if ((scod & ~7) || prog > 4 || layers != 1 || mct != 0 || nl > 32 || xcb > 10 || ycb > 10 ||
          xcb + ycb > 12 || style != 0x40 || transform > 1 ||
          len != 12u + (precincts ? nl + 1u : 0u))
        return "COD marker outside the plain HTJ2K subset";
      for (int r = 0; precincts && r <= nl; ++r) {
        const int pp = src[v + 10 + r];
        if ((pp & 0xF) > 15 || (r > 0 && ((pp & 0xF) == 0 || (pp >> 4) == 0)))
          return "COD marker with impossible precinct sizes";
      }
    } else if (m == 0x5C) {  // QCD
      if (qcd++ || len < 4) return "QCD marker repeated or short";
      qstyle = src[v] & 0x1F;
      lqcd = len;
    } else if (m != 0x64) {  // COM is skipped; nothing else
      return "marker 0xFF" + std::to_string(m) + " in the main header";
    }
    pos += 2 + len;
  }
  if (!cap || cod != 1 || qcd != 1) return "no CAP (HT), COD or QCD marker";
  const std::uint32_t bands = 3u * static_cast<std::uint32_t>(nl) + 1u;
  if (!((transform == 1 && qstyle == 0 && lqcd == 3 + bands) ||
        (transform == 0 && qstyle == 2 && lqcd == 3 + 2 * bands)))
    return "QCD marker does not match the COD marker";
  while (true) {  // tile-parts: SOT (Lsot 10, Isot, Psot, TPsot, TNsot), then SOD
    if (pos + 2 <= n && src[pos] == 0xFF && src[pos + 1] == 0xD9) return "";
    if (pos + 14 > n || src[pos] != 0xFF || src[pos + 1] != 0x90 || be16(pos + 2) != 10 ||
        be16(pos + 4) >= ntiles || src[pos + 12] != 0xFF || src[pos + 13] != 0x93)
      return "truncated or corrupt tile-part at byte " + std::to_string(pos);
    const std::size_t psot = be32(pos + 6);
    if (psot < 14 || psot > n - pos)
      return "tile-part of " + std::to_string(psot) + " bytes at byte " + std::to_string(pos) +
             " runs past the end of the frame (" + std::to_string(n) + " bytes): truncated";
    pos += psot;
  }
}

// Decodes one checked codestream into dst (the frame's samples).
void decode_openjph(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                    std::uint8_t* dst) {
  // OpenJPH 0.9 frees an invalid pointer when a codestream that threw (a corrupt
  // code-block) is destroyed: the codestream and its file are let go (leaked, a few
  // MB at most) when it throws, and destroyed only after a clean decode.
  auto* file_p = new ojph::mem_infile;
  auto* cs_p = new ojph::codestream;
  ojph::mem_infile& file = *file_p;
  ojph::codestream& cs = *cs_p;
  file.open(src, n);
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
  delete cs_p;
  delete file_p;
}

}  // namespace
#endif

#ifdef NEUROVFM_OPENJPEG_HTJ2K
namespace {
// OpenJPEG >= 2.5 reads HT code-blocks in the same codestream syntax (and JP2 files).
void decode_htj2k_openjpeg(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                           std::uint8_t* dst) {
  try {
    decode_jpeg2000(src, n, spec, dst);
  } catch (const CodecError& e) {
    std::string what = e.what();
    if (what.rfind("JPEG 2000", 0) == 0) what = "HTJ2K" + what.substr(9);
    throw CodecError(what);
  }
}
}  // namespace
#endif

void decode_htj2k([[maybe_unused]] const std::uint8_t* src, [[maybe_unused]] std::size_t n,
                  [[maybe_unused]] const FrameSpec& spec, [[maybe_unused]] std::uint8_t* dst) {
#if defined(NEUROVFM_HAVE_OPENJPH)
  const bool soc = n >= 4 && src[0] == 0xFF && src[1] == 0x4F && src[2] == 0xFF && src[3] == 0x51;
  const std::string why = soc ? openjph_subset(src, n) : "no codestream (SOC/SIZ markers)";
  if (!why.empty()) {
#ifdef NEUROVFM_OPENJPEG_HTJ2K
    decode_htj2k_openjpeg(src, n, spec, dst);
    return;
#else
    throw CodecError("HTJ2K: " + why);
#endif
  }
  configure_openjph();
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
  decode_htj2k_openjpeg(src, n, spec, dst);
#else
  throw CodecError("this build has no HTJ2K decoder (neither OpenJPH nor OpenJPEG >= 2.5 found)");
#endif
}

}  // namespace neurovfm::codecs
