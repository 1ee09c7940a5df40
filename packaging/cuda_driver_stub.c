/* A link-time stand-in for the NVIDIA driver's libcuda.so.1, for CUDA toolkits that ship without
 * their own stubs/libcuda.so (the slim container toolkits do).
 *
 * libggml-cuda calls these driver functions directly for its virtual-memory pool, so it links
 * libcuda.so.1. This stub carries the same SONAME and the symbols, which is all the linker needs;
 * it is never packaged (build.py refuses a package holding any libcuda.so*), and at run time the
 * user's driver provides the real functions. Every stub returns CUDA_ERROR_UNKNOWN (999).
 */
#define DRIVER_STUB(name) \
    int name(void) { return 999; }

DRIVER_STUB(cuDeviceGet)
DRIVER_STUB(cuDeviceGetAttribute)
DRIVER_STUB(cuGetErrorString)
DRIVER_STUB(cuMemAddressFree)
DRIVER_STUB(cuMemAddressReserve)
DRIVER_STUB(cuMemCreate)
DRIVER_STUB(cuMemGetAllocationGranularity)
DRIVER_STUB(cuMemMap)
DRIVER_STUB(cuMemRelease)
DRIVER_STUB(cuMemSetAccess)
DRIVER_STUB(cuMemUnmap)
