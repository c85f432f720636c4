// The resampling kernels compiled with -mavx2 (no FMA): see resample_impl.hpp.
#define NEUROVFM_ISA avx2
#include "resample_impl.hpp"
