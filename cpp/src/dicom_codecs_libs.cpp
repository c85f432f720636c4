// Frame decoders backed by libraries, each compiled in only when CMake found the
// library (NEUROVFM_HAVE_CHARLS: the bundled CharLS in third_party/charls, or the
// system's with -DNEUROVFM_SYSTEM_CHARLS=ON; _OPENJPEG, _LIBJPEG); without it the
// decoder throws and dicom_codec_reason says the build lacks it.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "neurovfm/dicom_codecs.hpp"

#ifdef NEUROVFM_HAVE_CHARLS
#include <charls/charls.h>
#endif
#ifdef NEUROVFM_HAVE_OPENJPEG
#include <openjpeg.h>
#endif
#ifdef NEUROVFM_HAVE_LIBJPEG
#include <jerror.h>
#include <jpeglib.h>
#endif

namespace neurovfm::codecs {
namespace {

[[maybe_unused]] void check_size(const char* what, int w, int h, int comps, const FrameSpec& s) {
  if (comps != 1)
    throw CodecError(std::string(what) + ": " + std::to_string(comps) +
                     " components (a scalar image has 1)");
  if (w != s.cols || h != s.rows)
    throw CodecError(std::string(what) + ": image is " + std::to_string(w) + " x " +
                     std::to_string(h) + ", the header says " + std::to_string(s.cols) + " x " +
                     std::to_string(s.rows));
}

[[maybe_unused]] inline std::size_t npix(const FrameSpec& s) {
  return static_cast<std::size_t>(s.rows) * static_cast<std::size_t>(s.cols);
}

}  // namespace

// ---------------------------------------------------------------------------
// JPEG-LS (CharLS)

bool have_charls() {
#ifdef NEUROVFM_HAVE_CHARLS
  return true;
#else
  return false;
#endif
}

std::string charls_library() {
#ifdef NEUROVFM_HAVE_CHARLS
  // The version of the code linked in (the bundled 2.4.2, or the system's shared library).
  return std::string("CharLS ") + charls_get_version_string();
#else
  return "";
#endif
}

void decode_jpeg_ls([[maybe_unused]] const std::uint8_t* src, [[maybe_unused]] std::size_t n,
                    [[maybe_unused]] const FrameSpec& spec, [[maybe_unused]] std::uint8_t* dst) {
#ifdef NEUROVFM_HAVE_CHARLS
  struct Del {
    void operator()(charls_jpegls_decoder* d) const { charls_jpegls_decoder_destroy(d); }
  };
  std::unique_ptr<charls_jpegls_decoder, Del> dec(charls_jpegls_decoder_create());
  if (!dec) throw std::bad_alloc();
  auto check = [](charls_jpegls_errc e) {
    if (static_cast<int>(e) != 0)
      throw CodecError(std::string("JPEG-LS: ") + charls_get_error_message(e));
  };
  // A stream cut short (no end-of-image marker before the fragment's 0x00 padding):
  // CharLS reads the missing bytes as zeros and spins for seconds in its run-length
  // code before it fails. Given an EOI marker right after the data it stops at once
  // (a marker inside the scan data), and a complete frame that merely lacks its EOI
  // still decodes.
  std::size_t end = n;
  while (end > 0 && src[end - 1] == 0x00 && n - end < 8) --end;
  std::vector<std::uint8_t> closed;
  if (end < 2 || src[end - 2] != 0xFF || src[end - 1] != 0xD9) {
    closed.assign(src, src + end);
    closed.push_back(0xFF);
    closed.push_back(0xD9);
    src = closed.data();
    n = closed.size();
  }
  check(charls_jpegls_decoder_set_source_buffer(dec.get(), src, n));
  check(charls_jpegls_decoder_read_header(dec.get()));
  charls_frame_info fi{};
  check(charls_jpegls_decoder_get_frame_info(dec.get(), &fi));
  check_size("JPEG-LS", static_cast<int>(fi.width), static_cast<int>(fi.height), fi.component_count,
             spec);
  const int bps = fi.bits_per_sample;
  if (bps < 2 || bps > spec.bits_allocated)
    throw CodecError("JPEG-LS: " + std::to_string(bps) + " bits per sample for BitsAllocated " +
                     std::to_string(spec.bits_allocated));
  std::size_t size = 0;
  check(charls_jpegls_decoder_get_destination_size(dec.get(), 0, &size));
  const std::size_t in_bytes = bps <= 8 ? 1 : 2;
  if (size != npix(spec) * in_bytes) throw CodecError("JPEG-LS: unexpected decoded size");
  const std::size_t out_bytes = static_cast<std::size_t>(spec.bits_allocated / 8);
  if (in_bytes == out_bytes) {
    check(charls_jpegls_decoder_decode_to_buffer(dec.get(), dst, size, 0));
    return;
  }
  // 8-bit samples into 16-bit storage: decode into the back half, widen forwards.
  std::uint8_t* tmp = dst + npix(spec);
  check(charls_jpegls_decoder_decode_to_buffer(dec.get(), tmp, size, 0));
  for (std::size_t i = 0; i < npix(spec); ++i) {
    const auto v = static_cast<std::uint16_t>(tmp[i]);
    std::memcpy(dst + 2 * i, &v, 2);  // writes bytes 2i, 2i+1 <= npix + i: not yet read
  }
#else
  throw CodecError("this build has no JPEG-LS decoder (CharLS not found)");
#endif
}

// ---------------------------------------------------------------------------
// JPEG 2000 (OpenJPEG)

bool have_openjpeg() {
#ifdef NEUROVFM_HAVE_OPENJPEG
  return true;
#else
  return false;
#endif
}

#ifdef NEUROVFM_HAVE_OPENJPEG
namespace {

struct MemStream {
  const std::uint8_t* data;
  std::size_t size, pos;
};

OPJ_SIZE_T mem_read(void* buf, OPJ_SIZE_T n, void* user) {
  auto* m = static_cast<MemStream*>(user);
  if (m->pos >= m->size) return static_cast<OPJ_SIZE_T>(-1);
  const std::size_t k = std::min<std::size_t>(n, m->size - m->pos);
  std::memcpy(buf, m->data + m->pos, k);
  m->pos += k;
  return k;
}
OPJ_OFF_T mem_skip(OPJ_OFF_T n, void* user) {
  auto* m = static_cast<MemStream*>(user);
  if (n < 0) {
    const auto back = static_cast<std::size_t>(-n);
    if (back > m->pos) return -1;
    m->pos -= back;
    return n;
  }
  const std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(n), m->size - m->pos);
  m->pos += k;
  return static_cast<OPJ_OFF_T>(k);
}
OPJ_BOOL mem_seek(OPJ_OFF_T n, void* user) {
  auto* m = static_cast<MemStream*>(user);
  if (n < 0 || static_cast<std::uint64_t>(n) > m->size) return OPJ_FALSE;
  m->pos = static_cast<std::size_t>(n);
  return OPJ_TRUE;
}
void on_error(const char* msg, void* user) {
  auto* s = static_cast<std::string*>(user);
  if (s->empty() && msg) {
    *s = msg;
    while (!s->empty() && (s->back() == '\n' || s->back() == ' ')) s->pop_back();
  }
}
void on_quiet(const char*, void*) {}

}  // namespace
#endif

void decode_jpeg2000([[maybe_unused]] const std::uint8_t* src, [[maybe_unused]] std::size_t n,
                     [[maybe_unused]] const FrameSpec& spec, [[maybe_unused]] std::uint8_t* dst) {
#ifdef NEUROVFM_HAVE_OPENJPEG
  if (n < 12) throw CodecError("JPEG 2000: codestream of " + std::to_string(n) + " bytes");
  static const std::uint8_t jp2_sig[12] = {0, 0, 0, 12, 'j', 'P', ' ', ' ', 13, 10, 0x87, 10};
  OPJ_CODEC_FORMAT fmt;
  if (src[0] == 0xFF && src[1] == 0x4F && src[2] == 0xFF && src[3] == 0x51)
    fmt = OPJ_CODEC_J2K;
  else if (std::memcmp(src, jp2_sig, 12) == 0)
    fmt = OPJ_CODEC_JP2;
  else
    throw CodecError("JPEG 2000: no codestream (SOC/SIZ) or JP2 signature");
  struct CodecDel {
    void operator()(opj_codec_t* c) const { opj_destroy_codec(c); }
  };
  struct StreamDel {
    void operator()(opj_stream_t* s) const { opj_stream_destroy(s); }
  };
  struct ImageDel {
    void operator()(opj_image_t* i) const { opj_image_destroy(i); }
  };
  MemStream ms{src, n, 0};
  std::unique_ptr<opj_stream_t, StreamDel> stream(opj_stream_create(1 << 16, OPJ_TRUE));
  if (!stream) throw std::bad_alloc();
  opj_stream_set_user_data(stream.get(), &ms, nullptr);
  opj_stream_set_user_data_length(stream.get(), n);
  opj_stream_set_read_function(stream.get(), mem_read);
  opj_stream_set_skip_function(stream.get(), mem_skip);
  opj_stream_set_seek_function(stream.get(), mem_seek);
  std::unique_ptr<opj_codec_t, CodecDel> codec(opj_create_decompress(fmt));
  if (!codec) throw std::bad_alloc();
  std::string err;
  opj_set_error_handler(codec.get(), on_error, &err);
  opj_set_warning_handler(codec.get(), on_quiet, nullptr);
  opj_set_info_handler(codec.get(), on_quiet, nullptr);
  opj_dparameters_t params;
  opj_set_default_decoder_parameters(&params);
  if (!opj_setup_decoder(codec.get(), &params)) throw CodecError("JPEG 2000: decoder setup failed");
  opj_decoder_set_strict_mode(codec.get(), OPJ_TRUE);  // a truncated codestream is an error
  opj_image_t* raw = nullptr;
  if (!opj_read_header(stream.get(), codec.get(), &raw))
    throw CodecError("JPEG 2000: bad header" + (err.empty() ? "" : " (" + err + ")"));
  std::unique_ptr<opj_image_t, ImageDel> image(raw);
  // Before decoding (which allocates the codestream's size): the frame the header promises.
  check_size("JPEG 2000", static_cast<int>(image->x1 - image->x0),
             static_cast<int>(image->y1 - image->y0), static_cast<int>(image->numcomps), spec);
  if (!opj_decode(codec.get(), stream.get(), image.get()) ||
      !opj_end_decompress(codec.get(), stream.get()))
    throw CodecError("JPEG 2000: cannot decode" + (err.empty() ? "" : " (" + err + ")"));
  if (image->numcomps < 1 || !image->comps) throw CodecError("JPEG 2000: no image components");
  const opj_image_comp_t& c = image->comps[0];
  check_size("JPEG 2000", static_cast<int>(c.w), static_cast<int>(c.h),
             static_cast<int>(image->numcomps), spec);
  if (!c.data) throw CodecError("JPEG 2000: no decoded data");
  if (c.dx != 1 || c.dy != 1) throw CodecError("JPEG 2000: subsampled component");
  if (c.prec < 1 || static_cast<int>(c.prec) > spec.bits_allocated)
    throw CodecError("JPEG 2000: precision " + std::to_string(c.prec) + " for BitsAllocated " +
                     std::to_string(spec.bits_allocated));
  const OPJ_INT32* d = c.data;
  const std::size_t count = npix(spec);
  if (spec.bits_allocated == 8) {
    for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<std::uint8_t>(d[i]);
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      const auto v = static_cast<std::uint16_t>(d[i]);
      std::memcpy(dst + 2 * i, &v, 2);
    }
  }
#else
  throw CodecError("this build has no JPEG 2000 decoder (OpenJPEG not found)");
#endif
}

// ---------------------------------------------------------------------------
// Lossy JPEG (libjpeg / libjpeg-turbo)

bool have_libjpeg() {
#ifdef NEUROVFM_HAVE_LIBJPEG
  return true;
#else
  return false;
#endif
}

int libjpeg_max_precision() {
#ifdef NEUROVFM_HAVE_LIBJPEG
  return BITS_IN_JSAMPLE;
#else
  return 0;
#endif
}

#ifdef NEUROVFM_HAVE_LIBJPEG
namespace {
struct JpegErr {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
};
void jpeg_fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->msg);
  std::longjmp(e->jump, 1);
}
void jpeg_quiet(j_common_ptr, int) {}
}  // namespace
#endif

void decode_jpeg_lossy([[maybe_unused]] const std::uint8_t* src, [[maybe_unused]] std::size_t n,
                       [[maybe_unused]] const FrameSpec& spec, [[maybe_unused]] std::uint8_t* dst) {
#ifdef NEUROVFM_HAVE_LIBJPEG
  if (spec.bits_allocated != 8 && BITS_IN_JSAMPLE == 8)
    throw CodecError("JPEG: only 8-bit lossy JPEG is supported by the linked libjpeg");
  // No C++ objects with destructors live between setjmp and longjmp.
  jpeg_decompress_struct cinfo;
  JpegErr err;
  std::memset(&cinfo, 0, sizeof(cinfo));
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_quiet;
  err.msg[0] = 0;
  int w = 0, h = 0, comps = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw CodecError(std::string("JPEG: ") + err.msg);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, src, static_cast<unsigned long>(n));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_GRAYSCALE;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = FALSE;
  w = static_cast<int>(cinfo.image_width);
  h = static_cast<int>(cinfo.image_height);
  comps = cinfo.num_components;
  if (comps != 1 || w != spec.cols || h != spec.rows || cinfo.data_precision != 8) {
    jpeg_destroy_decompress(&cinfo);
    if (cinfo.data_precision != 8)
      throw CodecError("JPEG: " + std::to_string(cinfo.data_precision) +
                       "-bit lossy JPEG is not supported by the linked libjpeg");
    check_size("JPEG", w, h, comps, spec);
  }
  jpeg_start_decompress(&cinfo);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row =
        dst + static_cast<std::size_t>(cinfo.output_scanline) * static_cast<std::size_t>(w);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  const long warnings = err.mgr.num_warnings;
  jpeg_destroy_decompress(&cinfo);
  // libjpeg pads a truncated or corrupt stream with grey and only warns: refuse it.
  if (warnings) throw CodecError("JPEG: corrupt or truncated data");
#else
  throw CodecError("this build has no JPEG decoder (libjpeg not found)");
#endif
}

}  // namespace neurovfm::codecs
