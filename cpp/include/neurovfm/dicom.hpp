// A minimal DICOM reader for the fast path: header fields needed to build a
// volume, and uncompressed little-endian pixel data. Anything else (compressed
// transfer syntaxes, big endian, deflate) is reported so the caller can fall
// back to a full decoder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace neurovfm {

struct DicomHeader {
  bool is_dicom = false;      // parsed as DICOM at all
  std::string error;          // non-empty when parsing failed
  std::string transfer_syntax;
  std::string sop_class_uid;
  std::string series_uid;
  std::string modality;
  std::string image_type;
  std::string photometric;
  int rows = 0, cols = 0;
  int samples_per_pixel = 1;
  int bits_allocated = 0, bits_stored = 0, high_bit = 0;
  int pixel_representation = 0;
  int number_of_frames = 1;
  bool has_ipp = false, has_iop = false, has_pixel_spacing = false;
  double ipp[3] = {0, 0, 0};
  double iop[6] = {0, 0, 0, 0, 0, 0};
  double pixel_spacing[2] = {1, 1};  // row spacing, column spacing (DICOM order)
  bool has_rescale = false;
  double slope = 1.0, intercept = 0.0;
  std::int64_t pixel_offset = -1;   // byte offset of the pixel data value
  std::int64_t pixel_length = 0;    // bytes (0xFFFFFFFF for encapsulated)
  bool encapsulated = false;        // undefined-length pixel data (compressed)
  bool little_endian = true;
  bool uncompressed_native = false; // pixel data readable by read_dicom_pixels
};

DicomHeader read_dicom_header(const std::string& path);

// Reads many headers in parallel; never throws for a bad file (see .error).
std::vector<DicomHeader> read_dicom_headers(const std::vector<std::string>& paths, int threads);

// Reads the (uncompressed, little-endian) frames of `paths` in order into `out`
// (slice after slice), applying out = stored * slope + intercept in double and
// converting to the output element type given by `out_dtype` (neurovfm::DType
// as int). Throws std::runtime_error naming the file on any inconsistency.
void read_dicom_pixels(const std::vector<std::string>& paths,
                       const std::vector<DicomHeader>& headers, void* out, int out_dtype,
                       int threads);

}  // namespace neurovfm
