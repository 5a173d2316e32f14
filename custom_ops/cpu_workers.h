// The CPU device's intra-op thread pool, shared by the custom ops' CPU kernels.
#ifndef TFMRCNN_CUSTOM_OPS_CPU_WORKERS_H_
#define TFMRCNN_CUSTOM_OPS_CPU_WORKERS_H_

#include "tensorflow/core/framework/op_kernel.h"

namespace tfmrcnn {

inline tsl::thread::ThreadPool* Workers(tensorflow::OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->workers;
}

}  // namespace tfmrcnn

#endif  // TFMRCNN_CUSTOM_OPS_CPU_WORKERS_H_
