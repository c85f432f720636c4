#include <string>
#include <vector>

#include "common.hpp"
#include "neurovfm/dicom.hpp"
#include "neurovfm/dicom_codecs.hpp"

namespace neurovfm::bindings {
namespace {

// Header strings may hold any bytes (other character sets, corrupted files):
// decode as UTF-8 with replacement instead of failing.
py::str safe_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

template <std::string DicomHeader::*M>
py::str str_field(const DicomHeader& h) {
  return safe_str(h.*M);
}

py::object dtype_or_none(int t) {
  if (t < 0) return py::none();
  return to_numpy(static_cast<DType>(t));
}

std::vector<DicomHeader> read_headers_py(const std::vector<std::string>& paths, int threads) {
  py::gil_scoped_release release;
  return read_dicom_headers(paths, threads);
}

// Reads the frames of `paths` (uncompressed little endian) into a new array of
// shape (frames, rows, cols) and element type `dtype`.
py::array read_pixels_py(const std::vector<std::string>& paths,
                         const std::vector<DicomHeader>& headers, const py::dtype& dtype,
                         int threads) {
  if (paths.size() != headers.size())
    throw py::value_error("read_dicom_pixels: paths and headers differ in length");
  if (paths.empty()) throw py::value_error("read_dicom_pixels: no files");
  const DType od = to_dtype(dtype, "read_dicom_pixels");
  // Validate every header (sizes against the pixel data lengths the parser
  // checked against the files) before allocating anything.
  const py::ssize_t frames = static_cast<py::ssize_t>(dicom_total_frames(paths, headers));
  const py::ssize_t rows = headers[0].rows, cols = headers[0].cols;
  py::array out = empty_big(dtype, std::vector<py::ssize_t>{frames, rows, cols});
  void* ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    read_dicom_pixels(paths, headers, ptr, static_cast<int>(od), threads);
  }
  return out;
}

py::str header_repr(const DicomHeader& h) {
  std::string s = "DicomHeader(";
  if (!h.is_dicom) return safe_str(s + "is_dicom=False, error='" + h.error + "')");
  s += "series_uid='" + h.series_uid + "', modality='" + h.modality + "', rows=" +
       std::to_string(h.rows) + ", cols=" + std::to_string(h.cols) +
       ", frames=" + std::to_string(h.number_of_frames) + ", transfer_syntax='" +
       h.transfer_syntax + "'";
  if (!h.error.empty()) s += ", error='" + h.error + "'";
  return safe_str(s + ")");
}

}  // namespace

void register_dicom(py::module_& m) {
  py::class_<DicomHeader>(m, "DicomHeader",
                          "Header fields of one DICOM file, as read by the fast parser.")
      .def_readonly("is_dicom", &DicomHeader::is_dicom)
      .def_property_readonly("error", &str_field<&DicomHeader::error>)
      .def_property_readonly("transfer_syntax", &str_field<&DicomHeader::transfer_syntax>)
      .def_property_readonly("media_storage_sop_class_uid", &str_field<&DicomHeader::media_storage_sop_class_uid>)
      .def_property_readonly("sop_class_uid", &str_field<&DicomHeader::sop_class_uid>)
      .def_property_readonly("series_uid", &str_field<&DicomHeader::series_uid>)
      .def_property_readonly("modality", &str_field<&DicomHeader::modality>)
      .def_property_readonly("image_type", &str_field<&DicomHeader::image_type>)
      .def_property_readonly("series_description", &str_field<&DicomHeader::series_description>)
      .def_property_readonly("photometric", &str_field<&DicomHeader::photometric>)
      .def_readonly("rows", &DicomHeader::rows)
      .def_readonly("cols", &DicomHeader::cols)
      .def_readonly("samples_per_pixel", &DicomHeader::samples_per_pixel)
      .def_readonly("bits_allocated", &DicomHeader::bits_allocated)
      .def_readonly("bits_stored", &DicomHeader::bits_stored)
      .def_readonly("high_bit", &DicomHeader::high_bit)
      .def_readonly("pixel_representation", &DicomHeader::pixel_representation)
      .def_readonly("number_of_frames", &DicomHeader::number_of_frames)
      .def_readonly("has_series_number", &DicomHeader::has_series_number)
      .def_readonly("series_number", &DicomHeader::series_number)
      .def_readonly("has_instance_number", &DicomHeader::has_instance_number)
      .def_readonly("instance_number", &DicomHeader::instance_number)
      .def_readonly("has_ipp", &DicomHeader::has_ipp)
      .def_readonly("has_iop", &DicomHeader::has_iop)
      .def_readonly("has_pixel_spacing", &DicomHeader::has_pixel_spacing)
      .def_property_readonly(
          "ipp", [](const DicomHeader& h) { return py::make_tuple(h.ipp[0], h.ipp[1], h.ipp[2]); })
      .def_property_readonly("iop",
                             [](const DicomHeader& h) {
                               return py::make_tuple(h.iop[0], h.iop[1], h.iop[2], h.iop[3],
                                                     h.iop[4], h.iop[5]);
                             })
      .def_property_readonly("pixel_spacing",
                             [](const DicomHeader& h) {
                               return py::make_tuple(h.pixel_spacing[0], h.pixel_spacing[1]);
                             })
      .def_readonly("has_rescale", &DicomHeader::has_rescale)
      .def_readonly("slope", &DicomHeader::slope)
      .def_readonly("intercept", &DicomHeader::intercept)
      .def_readonly("has_preamble", &DicomHeader::has_preamble)
      .def_readonly("explicit_vr", &DicomHeader::explicit_vr)
      .def_readonly("file_size", &DicomHeader::file_size)
      .def_readonly("has_pixel_data", &DicomHeader::has_pixel_data)
      .def_readonly("float_pixel_data", &DicomHeader::float_pixel_data)
      .def_readonly("pixel_offset", &DicomHeader::pixel_offset)
      .def_readonly("pixel_length", &DicomHeader::pixel_length)
      .def_readonly("encapsulated", &DicomHeader::encapsulated)
      .def_readonly("little_endian", &DicomHeader::little_endian)
      .def_readonly("uncompressed_native", &DicomHeader::uncompressed_native)
      .def_property_readonly(
          "stored_dtype", [](const DicomHeader& h) { return dtype_or_none(dicom_stored_dtype(h)); },
          "NumPy dtype of the stored pixels, or None when the fast path cannot read them.")
      .def_property_readonly(
          "output_dtype", [](const DicomHeader& h) { return dtype_or_none(dicom_output_dtype(h)); },
          "NumPy dtype GDCM/SimpleITK give this file after rescaling, or None when the fast "
          "path cannot produce it.")
      .def_property_readonly("compressed_readable", &dicom_compressed_readable,
                             "True when the pixel data is compressed in a transfer syntax the "
                             "compiled reader decodes itself.")
      .def_property_readonly("fast_readable", &dicom_fast_readable,
                             "True when the compiled reader can read this file exactly as "
                             "SimpleITK would (see dicom.hpp).")
      .def("__repr__", &header_repr);

  m.def(
      "codecs",
      [] {
        py::dict d;
        d["rle"] = true;
        d["jpeg_lossless"] = true;
        d["jpeg_ls"] = codecs::have_charls();
        d["jpeg2000"] = codecs::have_openjpeg();
        d["jpeg_lossy"] = codecs::have_libjpeg();
        d["htj2k"] = codecs::have_htj2k();
        return d;
      },
      "{codec: True when this build decodes its compressed DICOM frames itself} (rle, "
      "jpeg_lossless, jpeg_ls, jpeg2000, jpeg_lossy, htj2k); a missing one falls back to "
      "SimpleITK.");
  m.def(
      "codec_libraries",
      [] {
        py::dict d;
        d["rle"] = "neurovfm";
        d["jpeg_lossless"] = "neurovfm";
        d["jpeg_ls"] = codecs::charls_library();
        d["jpeg2000"] = codecs::have_openjpeg() ? "OpenJPEG" : "";
        d["jpeg_lossy"] = codecs::have_libjpeg() ? "libjpeg" : "";
        d["htj2k"] = codecs::htj2k_library();
        return d;
      },
      "{codec: the library that decodes it in this build ('' when none)}, keys as codecs().");
  m.def(
      "dicom_codec_status",
      [](const std::string& ts, int bits_stored) {
        return py::make_tuple(dicom_codec_name(ts), dicom_codec_reason(ts, bits_stored));
      },
      py::arg("transfer_syntax"), py::arg("bits_stored"),
      "(name, reason) of a transfer syntax: its short name ('' when not compressed) and why the "
      "compiled reader does not decode it ('' when it does).");
  m.def("read_dicom_header", &read_dicom_header, py::arg("path"),
        py::call_guard<py::gil_scoped_release>(),
        "Parse the header of one DICOM file up to its pixel data (never raises for a bad "
        "file: see .error).");
  m.def("read_dicom_headers", &read_headers_py, py::arg("paths"), py::arg("threads"),
        "Parse many DICOM headers in parallel (never raises for a bad file).");
  m.def("read_dicom_pixels", &read_pixels_py, py::arg("paths"), py::arg("headers"),
        py::arg("dtype"), py::arg("threads"),
        "Read uncompressed little-endian or compressed (see dicom_codec_status) frames into a "
        "new (frames, rows, cols) array, "
        "rescaled as GDCM does and converted to dtype. RuntimeError names the file on any "
        "problem.");
}

}  // namespace neurovfm::bindings
