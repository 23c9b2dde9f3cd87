// The DLPack ABI, the subset fastnn exports: v0.8's unversioned "dltensor" capsules and v1.0's
// "dltensor_versioned" ones (offered when the consumer passes max_version >= (1, 0)); see
// https://github.com/dmlc/dlpack/blob/v1.0/include/dlpack/dlpack.h. Layouts must match it
// exactly: consumers (PyTorch, CuPy, JAX) read these structs through the capsule pointer.
#pragma once

#include <cstdint>

extern "C" {

enum DLDeviceTypeCode : int32_t { kDLCPU = 1, kDLCUDA = 2 };
enum DLDataTypeCodeValue : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct DLDevice {
  int32_t device_type;  // kDLCUDA
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;  // kDLFloat (32 or 64 bits) or kDLBfloat (16 bits)
  uint8_t bits;
  uint16_t lanes;  // 1
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;    // ndim entries
  int64_t* strides;  // ndim entries, in elements (NULL would mean C-contiguous)
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// DLPack 1.0: the version travels first so that a consumer can check it before reading the rest.
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;  // DLPACK_FLAG_BITMASK_READ_ONLY (1 << 0), DLPACK_FLAG_BITMASK_IS_COPIED (1 << 1)
  DLTensor dl_tensor;
};

}  // extern "C"

static_assert(sizeof(DLDevice) == 8, "DLDevice layout");
static_assert(sizeof(DLDataType) == 4, "DLDataType layout");
static_assert(sizeof(DLTensor) == 48, "DLTensor layout");
static_assert(sizeof(DLManagedTensor) == 64, "DLManagedTensor layout");
static_assert(sizeof(DLManagedTensorVersioned) == 80, "DLManagedTensorVersioned layout");
