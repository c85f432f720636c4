// Decoders for compressed (encapsulated) DICOM pixel data, one frame at a time.
//
// The library's own decoders: RLE Lossless (PS3.5 Annex G) and JPEG Lossless,
// process 14 (ITU T.81 Annex H, predictors 1-7 and the point transform). JPEG-LS:
// CharLS (bundled, third_party/charls). System libraries, where the build found
// them: JPEG 2000 (OpenJPEG),
// HTJ2K (OpenJPH; else OpenJPEG >= 2.5, which also decodes it), lossy 8-bit JPEG
// (libjpeg-turbo). A syntax whose library is missing is reported as unavailable
// (dicom_codec_reason) so the caller can fall back.
//
// Every decoder checks every read against the compressed buffer and every write
// against the frame: a corrupt or truncated frame throws CodecError (its what()
// is the reason) and never reads or writes outside the buffers it was given.
// Nothing here knows about files or threads; dicom.cpp splits a file into frames
// and decodes the frames in parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace neurovfm {

enum class DicomCodec : int {
  none = 0,       // not encapsulated (native), or a syntax this module does not know
  rle,            // 1.2.840.10008.1.2.5
  jpeg_ls,        // 1.2.840.10008.1.2.4.80, .4.81
  jpeg2000,       // 1.2.840.10008.1.2.4.90, .4.91
  jpeg_lossless,  // 1.2.840.10008.1.2.4.57, .4.70
  jpeg_lossy,     // 1.2.840.10008.1.2.4.50, .4.51
  htj2k,          // 1.2.840.10008.1.2.4.201, .4.202, .4.203 (High-Throughput JPEG 2000)
};

// A compressed frame that cannot be decoded; what() is the reason.
class CodecError : public std::runtime_error {
 public:
  explicit CodecError(const std::string& reason) : std::runtime_error(reason) {}
};

// The codec of an encapsulated transfer syntax (DicomCodec::none for others).
DicomCodec dicom_codec(const std::string& transfer_syntax);
// A short name of the transfer syntax ("RLE Lossless", "JPEG-LS", ...), or "".
std::string dicom_codec_name(const std::string& transfer_syntax);
// Empty when this build decodes frames of `transfer_syntax` with `bits_stored`
// bits per sample; otherwise why not (unknown syntax, library missing from the
// build, a precision the library cannot decode).
std::string dicom_codec_reason(const std::string& transfer_syntax, int bits_stored);

// What a decoded frame must look like (from the DICOM header).
struct FrameSpec {
  int rows = 0, cols = 0;
  int bits_allocated = 16;  // 8 or 16
  int bits_stored = 16;
  int pixel_representation = 0;  // 0 unsigned, 1 signed (two's complement)
};

// Decodes one frame of `codec` from src[0, n) into dst: rows x cols samples of
// bits_allocated / 8 bytes each, host byte order (a sample narrower than
// BitsAllocated is stored in the low bits; the caller masks and sign-extends
// BitsStored as for native data). Throws CodecError on any problem.
void decode_frame(DicomCodec codec, const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                  std::uint8_t* dst);

// One compressed fragment: bytes [offset, offset + length) of the buffer given
// to split_encapsulated.
struct Fragment {
  std::size_t offset = 0, length = 0;
};

// Parses encapsulated pixel data (data[0, n): the items after the (7FE0,0010)
// element header, up to the end of the file) into `frames` frames of one or
// more fragments each, as GDCM does: the Basic Offset Table when it has entries;
// else one frame = all fragments when frames == 1, one fragment per frame when
// their counts agree, else fragments grouped up to each JPEG end-of-image marker
// (JPEG family only). Throws CodecError naming what is wrong.
std::vector<std::vector<Fragment>> split_encapsulated(const std::uint8_t* data, std::size_t n,
                                                      std::int64_t frames, DicomCodec codec);

namespace codecs {
// The individual decoders (decode_frame dispatches to them).
void decode_rle(const std::uint8_t* src, std::size_t n, const FrameSpec& spec, std::uint8_t* dst);
void decode_jpeg_lossless(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                          std::uint8_t* dst);
// Defined in dicom_codecs_libs.cpp; throw CodecError when the build lacks the library.
void decode_jpeg_ls(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                    std::uint8_t* dst);
void decode_jpeg2000(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                     std::uint8_t* dst);
void decode_jpeg_lossy(const std::uint8_t* src, std::size_t n, const FrameSpec& spec,
                       std::uint8_t* dst);
// Defined in dicom_codecs_htj2k.cpp: OpenJPH where the build found it, else OpenJPEG
// when it is >= 2.5 (have_htj2k() says whether either is in); throws CodecError otherwise.
void decode_htj2k(const std::uint8_t* src, std::size_t n, const FrameSpec& spec, std::uint8_t* dst);
bool have_charls();
// "CharLS <version linked>" (e.g. "CharLS 2.4.2"), or "" without JPEG-LS.
std::string charls_library();
bool have_openjpeg();
bool have_libjpeg();
bool have_openjph();
bool have_htj2k();
// The library that decodes HTJ2K frames in this build: "OpenJPH", "OpenJPEG" or "".
const char* htj2k_library();
// The largest precision the lossy JPEG library decodes (8, or 12 with a 12-bit build).
int libjpeg_max_precision();
}  // namespace codecs

}  // namespace neurovfm
