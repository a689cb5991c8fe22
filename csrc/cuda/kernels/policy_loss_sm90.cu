// actfocus_native::policy_loss on sm_90: each row on chip across a thread-block cluster.
//
// The C CTAs of a cluster split a row into C slices. Each CTA loads its slice once from global
// memory into its shared memory (16-byte vectors) while it accumulates the slice's online softmax
// state; the C states are combined through distributed shared memory in rank order (the same
// result in every CTA); every CTA then computes the token's loss coefficient and writes its
// slice's gradient from shared memory. The logits are read once and the gradient written once.
//
// Built only when 9.0a is listed (setup.py); compiled for another arch of the same build (sm_80,
// sm_100, sm_120, PTX) the kernel body is empty and the host side never launches it (it checks the
// device and the loaded binary's arch): the cluster path is tuned and checked for sm_90 only.
#include <cooperative_groups.h>

#include "cuda/kernels/launch.h"
#include "cuda/kernels/row_common.cuh"

namespace cg = cooperative_groups;

namespace actfocus::cuda {
namespace {

constexpr int kClusterThreads = 512;
constexpr int kMaxClusterSize = 8;                     // the portable maximum
constexpr int64_t kPreferredSliceBytes = 96 * 1024;    // two CTAs per SM

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
constexpr int kLoadUnroll = 4;  // vectors in flight per thread

__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" : : : "memory");
}

__device__ __forceinline__ void cluster_wait_acquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" : : : "memory");
}
#endif

// grid: rows * C blocks, cluster (C, 1, 1); dynamic shared memory: slice_vectors * 16 bytes.
// Every row of logits and dlogits starts on a 16-byte boundary (checked by the launcher).
template <typename T, typename F>
__global__ void __launch_bounds__(kClusterThreads) cluster_rows_kernel(const RowParams params,
                                                                      const int64_t slice_vectors) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
  using IO = VecIO<T>;
  constexpr int kVec = IO::kSize;
  extern __shared__ uint4 slice[];
  __shared__ RowState scratch[kMaxWarps + 1];  // scratch[kMaxWarps]: this CTA's state, read by peers
  __shared__ RowState row_state;
  __shared__ float shared_coef;
  __shared__ float shared_grad_scale;
  __shared__ bool shared_active;

  // shapes and layout: this CTA owns vectors [first, first + count) of the row, the last rank
  // also the tail elements past the last whole vector (one per thread, kept in a register)
  const cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const unsigned cluster_size = cluster.num_blocks();
  const int64_t row = blockIdx.x / cluster_size;
  const int64_t vocab = params.vocab;
  const F form = make_form<F>(params.transform);
  const T* logits = static_cast<const T*>(params.logits) + row * params.logits_row_stride;
  const int64_t vectors = vocab / kVec;
  const int64_t tail_start = vectors * kVec;
  const int64_t first = static_cast<int64_t>(rank) * slice_vectors;
  const int64_t end = first + slice_vectors < vectors ? first + slice_vectors : vectors;
  const int64_t count = end > first ? end - first : 0;
  const uint4* body = reinterpret_cast<const uint4*>(logits) + first;
  const bool has_tail_element = rank == cluster_size - 1 && tail_start + threadIdx.x < vocab;

  // the target's logit, read before the first cluster barrier: no CTA writes before it
  const RowTarget target = read_target(logits, params.targets[row], params.ignore_index, vocab);

  // the slice: global -> shared memory, with its online softmax state
  RowState state = empty_state();
  for (int64_t base = threadIdx.x; base < count; base += kClusterThreads * kLoadUnroll) {
    uint4 loaded[kLoadUnroll];
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      const int64_t j = base + u * kClusterThreads;
      loaded[u] = j < count ? body[j] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      const int64_t j = base + u * kClusterThreads;
      if (j < count) {
        slice[j] = loaded[u];
        float z[kVec];
        IO::to_float(loaded[u], z);
        accumulate(state, z, form);
      }
    }
  }
  float tail_logit = 0.0f;
  if (has_tail_element) {
    tail_logit = IO::load(logits + tail_start + threadIdx.x);
    const float z[1] = {tail_logit};
    accumulate(state, z, form);
  }
  block_reduce(state, form, scratch);  // leaves the CTA's state in scratch[kMaxWarps]

  // the row's state: the cluster's CTA states combined by warp 0 in rank order
  cluster.sync();  // every CTA's state is written and visible cluster-wide
  if (threadIdx.x < kWarpSize) {
    RowState part = empty_state();
    if (threadIdx.x < cluster_size) part = *cluster.map_shared_rank(&scratch[kMaxWarps], threadIdx.x);
    part = warp_reduce(part, form);
    if (threadIdx.x == 0) row_state = part;
  }
  __syncthreads();
  cluster_arrive_release();  // done reading the peers' shared memory (waited for before exit)
  const RowState total = row_state;

  // the token: every CTA computes the same loss; rank 0 writes the per-token outputs
  if (threadIdx.x == 0) {
    const TokenStatistics stats = token_statistics(total, target.counts, target.logit, params.transform);
    const TokenInputs inputs = read_token_inputs(params, row, target.counts);
    const TokenLoss loss = token_loss(stats.logp, stats.entropy, inputs, params.loss);
    if (rank == 0) {
      params.logp[row] = static_cast<float>(stats.logp);
      params.energy[row] = stats.energy;
      params.entropy[row] = stats.entropy;
      params.token_loss[row] = loss.loss;
      params.ratio[row] = loss.ratio;
      params.clipped[row] = loss.clipped;
    }
    shared_coef = loss.coef;
    shared_grad_scale = clamped_over_temperature(inputs.scale * params.transform.logit_scale,
                                                 params.transform.temperature);
    shared_active = target.counts && inputs.scale != 0.0f;
  }
  __syncthreads();

  // the slice's gradient from shared memory (exactly 0 on inactive rows)
  T* grad = static_cast<T*>(params.dlogits) + row * params.dlogits_row_stride;
  uint4* grad_body = reinterpret_cast<uint4*>(grad) + first;
  if (shared_active) {
    RowGrad<F> g;
    g.form = form;
    g.row_max = total.max;
    g.tanh_max = total.tanh_max;
    g.log2_sum = log2f(total.sum);
    g.mean_shift2 = total.wsum / total.sum;
    g.grad_scale = shared_grad_scale;
    g.centred_ln2 = params.loss.entropy_coef * kLn2;
    g.coef = shared_coef;
    g.target_coef = shared_coef;
    g.target = target.onehot;
    for (int64_t j = threadIdx.x; j < count; j += kClusterThreads) {
      float z[kVec];
      float values[kVec];
      IO::to_float(slice[j], z);
#pragma unroll
      for (int l = 0; l < kVec; ++l) values[l] = element_grad(z[l], (first + j) * kVec + l, g);
      grad_body[j] = IO::from_float(values);
    }
    if (has_tail_element) {
      const int64_t i = tail_start + threadIdx.x;
      IO::store(grad + i, element_grad(tail_logit, i, g));
    }
  } else {
    for (int64_t j = threadIdx.x; j < count; j += kClusterThreads) grad_body[j] = make_uint4(0u, 0u, 0u, 0u);
    if (has_tail_element) IO::store(grad + tail_start + threadIdx.x, 0.0f);
  }
  cluster_wait_acquire();  // no CTA exits while a peer may still read its shared memory
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched: the launcher requires the sm_90 binary
#endif
}

bool row_starts_aligned(const void* base, int64_t row_stride, int64_t element_size) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (row_stride * element_size) % 16 == 0;
}

// cudaErrorNotSupported after clearing any error a failed query left behind.
cudaError_t not_supported() {
  (void)cudaGetLastError();
  return cudaErrorNotSupported;
}

template <typename T, typename F>
cudaError_t launch_cluster_rows(const RowParams& params, cudaStream_t stream) {
  constexpr int kVec = VecIO<T>::kSize;
  const auto kernel = cluster_rows_kernel<T, F>;
  if (params.dlogits == nullptr ||
      !row_starts_aligned(params.logits, params.logits_row_stride, sizeof(T)) ||
      !row_starts_aligned(params.dlogits, params.dlogits_row_stride, sizeof(T))) {
    return cudaErrorNotSupported;
  }

  // an sm_90 device running this kernel's sm_90 binary (not the empty body of another arch)
  int device = 0;
  int major = 0;
  int max_shared = 0;
  cudaFuncAttributes attributes;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    return not_supported();
  }
  if (major != 9 || attributes.binaryVersion != 90) return cudaErrorNotSupported;

  // the smallest cluster whose slices fit two CTAs per SM, else the largest that fits at all
  const int64_t vectors = params.vocab / kVec;
  const int64_t max_slice_bytes = static_cast<int64_t>(max_shared) - static_cast<int64_t>(attributes.sharedSizeBytes);
  int cluster_size = 1;
  while (cluster_size < kMaxClusterSize &&
         (vectors + cluster_size - 1) / cluster_size * 16 > kPreferredSliceBytes) {
    cluster_size *= 2;
  }
  const int64_t slice_vectors = (vectors + cluster_size - 1) / cluster_size;
  const int64_t slice_bytes = slice_vectors * 16;
  if (slice_bytes > max_slice_bytes || params.rows * cluster_size > INT32_MAX) {
    return cudaErrorNotSupported;
  }
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(slice_bytes)) != cudaSuccess) {
    return not_supported();
  }

  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster_size);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(params.rows * cluster_size));
  config.blockDim = dim3(kClusterThreads);
  config.dynamicSmemBytes = static_cast<size_t>(slice_bytes);
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  int active_clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&active_clusters, kernel, &config) != cudaSuccess) return not_supported();
  if (active_clusters < 1) return cudaErrorNotSupported;
  return cudaLaunchKernelEx(&config, kernel, params, slice_vectors);
}

template <typename F>
cudaError_t launch_cluster_rows_in_form(const RowParams& params, cudaStream_t stream) {
  switch (params.dtype) {
    case RowDtype::kFloat32:
      return launch_cluster_rows<float, F>(params, stream);
    case RowDtype::kFloat16:
      return launch_cluster_rows<__half, F>(params, stream);
    case RowDtype::kBFloat16:
      return launch_cluster_rows<__nv_bfloat16, F>(params, stream);
  }
  return cudaErrorNotSupported;
}

}  // namespace

cudaError_t launch_policy_loss_cluster(const RowParams& params, cudaStream_t stream) {
  return params.transform.capped() ? launch_cluster_rows_in_form<Form<true, false>>(params, stream)
                                   : launch_cluster_rows_in_form<Form<false, false>>(params, stream);
}

}  // namespace actfocus::cuda
