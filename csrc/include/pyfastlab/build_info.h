#pragma once
// What this build of _C contains; reported by pyfastlab.info().
namespace pyfastlab {
#ifdef PFL_WITH_CUDA
inline constexpr bool kWithCuda = true;
inline constexpr const char* kCudaArchs = PFL_CUDA_ARCHS;
inline constexpr const char* kCudaVersion = PFL_CUDA_VERSION;
#else
inline constexpr bool kWithCuda = false;
inline constexpr const char* kCudaArchs = "";
inline constexpr const char* kCudaVersion = "";
#endif
}  // namespace pyfastlab
