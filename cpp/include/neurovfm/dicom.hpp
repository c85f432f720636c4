// A minimal DICOM reader for the fast path: header fields needed to build a
// volume, and uncompressed little-endian pixel data (also deflated explicit VR
// little endian, inflated with zlib where the build has it); compressed frames
// are decoded by neurovfm/dicom_codecs.hpp. Anything else (big endian, other
// compressions) is reported so the caller can fall back to a full decoder.
//
// The parser never reads outside the file and never allocates from a length it
// has not checked against the file size: a truncated file, a bogus length or a
// broken sequence sets `error` (read_dicom_header never throws for a bad file).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace neurovfm {

struct DicomHeader {
  bool is_dicom = false;      // parsed as DICOM at all
  std::string error;          // non-empty when parsing failed
  std::string transfer_syntax;
  std::string media_storage_sop_class_uid;  // (0002,0002)
  std::string sop_class_uid;                // (0008,0016)
  std::string series_uid;
  std::string modality;
  std::string image_type;     // raw value, backslash separated
  std::string series_description;
  std::string photometric;
  int rows = 0, cols = 0;
  int samples_per_pixel = 1;
  int bits_allocated = 0, bits_stored = 0, high_bit = 0;
  int pixel_representation = 0;
  int number_of_frames = 1;
  bool has_instance_number = false;
  int instance_number = 0;
  bool has_series_number = false;  // (0020,0011)
  int series_number = 0;
  bool has_ipp = false, has_iop = false, has_pixel_spacing = false;
  double ipp[3] = {0, 0, 0};
  double iop[6] = {0, 0, 0, 0, 0, 0};
  double pixel_spacing[2] = {1, 1};  // row spacing, column spacing (DICOM order)
  bool has_rescale = false;
  double slope = 1.0, intercept = 0.0;  // slope 0 is replaced by 1, as GDCM does
  bool has_preamble = false;            // 128 bytes + "DICM"
  bool explicit_vr = true;
  std::int64_t file_size = 0;
  bool has_pixel_data = false;      // (7FE0,0010) found at top level
  bool float_pixel_data = false;    // (7FE0,0008) or (7FE0,0009) found instead
  std::int64_t pixel_offset = -1;   // byte offset of the pixel data value
  std::int64_t pixel_length = 0;    // bytes (0xFFFFFFFF for encapsulated)
  bool encapsulated = false;        // undefined-length pixel data (compressed)
  bool little_endian = true;
  bool uncompressed_native = false; // pixel data readable by read_dicom_pixels
  // Deflated explicit VR little endian: where the deflate stream starts (-1: not
  // deflated). The dataset was parsed inflated; pixel_offset is an offset into
  // [file bytes before deflate_offset] + [inflated bytes].
  std::int64_t deflate_offset = -1;
};

DicomHeader read_dicom_header(const std::string& path);

// Reads many headers in parallel; never throws for a bad file (see .error).
std::vector<DicomHeader> read_dicom_headers(const std::vector<std::string>& paths, int threads);

// Element type of the stored pixels (from BitsAllocated and PixelRepresentation)
// as a neurovfm::DType int, or -1 when the fast path cannot read them.
int dicom_stored_dtype(const DicomHeader& h);

// Element type GDCM/ITK (SimpleITK) give this file after the modality rescale:
// the stored type when slope == 1 and intercept == 0; float64 when slope or
// intercept is not an integer; otherwise the smallest integer type holding
// slope * [min, max] + intercept of the BitsStored range. -1 when the fast path
// cannot produce it (out of range, colour, or a type ITK itself refuses).
// f64 is returned as DType::f64.
int dicom_output_dtype(const DicomHeader& h);

// True when read_dicom_pixels can read this file and its geometry is the
// classic one GDCM takes from ImagePositionPatient / ImageOrientationPatient /
// PixelSpacing: single-frame CT, MR or PET image storage, uncompressed little
// endian, MONOCHROME2 (SimpleITK inverts MONOCHROME1), a supported pixel layout and rescale, a valid (unit,
// orthogonal within 1e-3, as GDCM's DirectionCosines::IsValid) orientation and
// a positive pixel spacing.
bool dicom_fast_readable(const DicomHeader& h);

// True when the pixel data is encapsulated (compressed) in a transfer syntax
// this build decodes itself (neurovfm/dicom_codecs.hpp) with 8 or 16 bits
// allocated. dicom_fast_readable accepts such files like uncompressed ones.
bool dicom_compressed_readable(const DicomHeader& h);

// Checks that read_dicom_pixels can read `paths` with `headers` (same rows and
// columns, supported layout, pixel data long enough for rows x cols x frames)
// and returns the total number of frames. Throws FileError (neurovfm/errors.hpp)
// naming the file otherwise. Lets a caller size the output before allocating it.
std::int64_t dicom_total_frames(const std::vector<std::string>& paths,
                                const std::vector<DicomHeader>& headers);

// Reads the frames of `paths` in order into `out` (uncompressed little endian,
// or compressed in a syntax dicom_compressed_readable accepts: the files are
// read and split into frames in parallel, then the frames decoded in parallel,
// one frame a task, each straight into its own slice of `out`)
// (slice after slice, each frame rows x cols in file order), applying
// out = stored * slope + intercept exactly as GDCM does (per file, in that
// file's own rescaled type, then converted to `out_dtype`, a neurovfm::DType
// as int). Unused high bits are masked (unsigned) or the sign bit of BitsStored
// extended (signed). Throws FileError naming the file on any
// inconsistency (sizes, truncation, unsupported encoding).
void read_dicom_pixels(const std::vector<std::string>& paths,
                       const std::vector<DicomHeader>& headers, void* out, int out_dtype,
                       int threads);

}  // namespace neurovfm
