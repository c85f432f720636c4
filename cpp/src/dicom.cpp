#include "neurovfm/dicom.hpp"

#include <stdexcept>

namespace neurovfm {

DicomHeader read_dicom_header(const std::string& path) {
  DicomHeader h;
  h.error = "not implemented: " + path;
  return h;
}

std::vector<DicomHeader> read_dicom_headers(const std::vector<std::string>& paths, int) {
  std::vector<DicomHeader> out;
  for (const auto& p : paths) out.push_back(read_dicom_header(p));
  return out;
}

void read_dicom_pixels(const std::vector<std::string>&, const std::vector<DicomHeader>&, void*, int,
                       int) {
  throw std::runtime_error("not implemented");
}

}  // namespace neurovfm
