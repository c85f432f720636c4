#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <memory>
#include <utility>
#include <stdexcept>
#include <vector>

#include "common.hpp"
#include "neurovfm/parallel.hpp"
#include "neurovfm/resample.hpp"

namespace neurovfm::bindings {
namespace {

using I3 = std::array<std::int64_t, 3>;
using D3 = std::array<double, 3>;

void make_plan(const I3& shape, const I3& n_out, const I3& start, const D3& t, const D3& s,
               AxisPlan plan[3]) {
  for (int k = 0; k < 3; ++k) {
    if (n_out[k] < 0 || start[k] < 0)
      throw py::value_error("resample: output sizes and crop starts must be >= 0");
    if (shape[k] <= 0) throw py::value_error("resample: input has an empty axis");
    if (!(t[k] > 0.0) || !(s[k] > 0.0) || !std::isfinite(t[k]) || !std::isfinite(s[k]))
      throw py::value_error("resample: spacings must be positive and finite");
    plan[k] = AxisPlan{n_out[k], start[k], t[k], s[k]};
  }
  // The output and the intermediate (double) volumes must fit in memory: no
  // absurd allocation for an absurd n_out (or stream shape).
  std::vector<py::ssize_t> work(3);
  for (int k = 0; k < 3; ++k) work[k] = std::max(n_out[k], shape[k]);
  checked_bytes(work, sizeof(double), "resample");
}

py::array resample(const py::array& in, const I3& n_out, const I3& start, const D3& t, const D3& s,
                   int threads, int last_axis) {
  VolumeView v = view3d(in, "resample");
  if (last_axis < -1 || last_axis > 2) throw py::value_error("resample: last_axis must be -1, 0, 1 or 2");
  AxisPlan plan[3];
  make_plan({v.shape[0], v.shape[1], v.shape[2]}, n_out, start, t, s, plan);
  py::array out(to_numpy(v.dtype), std::vector<py::ssize_t>{n_out[0], n_out[1], n_out[2]});
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    resample_bspline(v, plan, dst, threads, last_axis);
  }
  return out;
}

std::vector<int> resample_order_py(const I3& shape, const I3& n_out, int last_axis) {
  if (last_axis < -1 || last_axis > 2) throw py::value_error("resample_order: last_axis must be -1, 0, 1 or 2");
  AxisPlan plan[3];
  make_plan(shape, n_out, {0, 0, 0}, {1.0, 1.0, 1.0}, {1.0, 1.0, 1.0}, plan);
  int order[3];
  resample_order(shape.data(), plan, last_axis, order);
  return {order[0], order[1], order[2]};
}

// Python face of StreamResampler: remembers the output shape and dtype.
struct PyStreamResampler {
  std::unique_ptr<StreamResampler> impl;
  I3 n_out;
  PyStreamResampler(const py::dtype& dt, const I3& shape, int stream_axis, const I3& n, const I3& start,
                    const D3& t, const D3& s)
      : n_out(n) {
    if (stream_axis < 0 || stream_axis > 2) throw py::value_error("stream_axis must be 0, 1 or 2");
    AxisPlan plan[3];
    make_plan(shape, n, start, t, s, plan);
    const std::int64_t sh[3] = {shape[0], shape[1], shape[2]};
    impl = std::make_unique<StreamResampler>(to_dtype(dt, "StreamResampler"), sh, stream_axis, plan);
  }
  // Background pushes: slabs stay referenced until their job is waited for.
  std::unique_ptr<SerialWorker> worker;
  std::deque<std::pair<std::size_t, py::object>> pending;

  void push(const py::array& slab, std::int64_t i0, int threads) {
    VolumeView v = view3d(slab, "StreamResampler.push");
    if (v.dtype != impl->dtype()) throw py::type_error("StreamResampler.push: slab dtype does not match");
    py::gil_scoped_release release;
    impl->push(v, i0, threads);
  }
  // Queue a push on a background thread and return its ticket; the caller
  // must not modify `slab` before wait(ticket).
  std::size_t submit(const py::array& slab, std::int64_t i0, int threads) {
    VolumeView v = view3d(slab, "StreamResampler.submit");
    if (v.dtype != impl->dtype()) throw py::type_error("StreamResampler.submit: slab dtype does not match");
    if (!worker) worker = std::make_unique<SerialWorker>();
    StreamResampler* target = impl.get();
    const std::size_t seq = worker->submit([target, v, i0, threads] { target->push(v, i0, threads); });
    pending.emplace_back(seq, slab);
    return seq;
  }
  void wait(std::size_t seq) {
    if (!worker) return;
    {
      py::gil_scoped_release release;
      try {
        worker->wait(seq);
      } catch (...) {
        py::gil_scoped_acquire acquire;
        pending.clear();
        throw;
      }
    }
    while (!pending.empty() && pending.front().first <= seq) pending.pop_front();
  }
  void close() {
    if (!worker) return;
    {
      py::gil_scoped_release release;
      worker.reset();  // drains the queue and joins
    }
    pending.clear();
  }
  ~PyStreamResampler() {
    if (worker) {
      py::gil_scoped_release release;
      worker.reset();
    }
  }
  py::array finish(int threads) {
    if (worker) {
      std::size_t last = pending.empty() ? 0 : pending.back().first;
      wait(last);
      close();
    }
    if (!impl->complete()) throw py::value_error("StreamResampler.finish: not every slice was pushed");
    if (impl->finished()) throw py::value_error("StreamResampler.finish: already finished");
    py::array out(to_numpy(impl->dtype()), std::vector<py::ssize_t>{n_out[0], n_out[1], n_out[2]});
    void* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      impl->finish(dst, threads);
    }
    return out;
  }
};

}  // namespace

void register_resample(py::module_& m) {
  m.def("resample_bspline", &resample, py::arg("volume"), py::arg("n_out"), py::arg("start"),
        py::arg("out_spacing"), py::arg("in_spacing"), py::arg("threads") = 1,
        py::arg("last_axis") = -1,
        "Cubic B-spline resampling of a 3-D array (numpy axis order) onto a cropped grid.");
  m.def("resample_order", &resample_order_py, py::arg("shape"), py::arg("n_out"), py::arg("last_axis") = -1,
        "The resampling passes' order (numpy axes): most shrinking first, last_axis (0..2) last.");
  py::class_<PyStreamResampler>(m, "StreamResampler",
                                "B-spline resampling of a volume pushed in slabs along one axis.")
      .def(py::init<const py::dtype&, const I3&, int, const I3&, const I3&, const D3&, const D3&>(),
           py::arg("dtype"), py::arg("shape"), py::arg("stream_axis"), py::arg("n_out"),
           py::arg("start"), py::arg("out_spacing"), py::arg("in_spacing"))
      .def("push", &PyStreamResampler::push, py::arg("slab"), py::arg("i0"), py::arg("threads") = 1)
      .def("submit", &PyStreamResampler::submit, py::arg("slab"), py::arg("i0"), py::arg("threads") = 1)
      .def("wait", &PyStreamResampler::wait, py::arg("ticket"))
      .def("close", &PyStreamResampler::close)
      .def("finish", &PyStreamResampler::finish, py::arg("threads") = 1);
}

}  // namespace neurovfm::bindings
