"""Go/no-go 3 for issue 14: does a persistent CUDA kernel that streams the next stage's weights while the
current stage computes beat the frame's launches on the predictor's MLP chain?

The task is barrier_probe.py's: the code predictor's MLP at batch 1 (x [1024] -> RMSNorm -> gate/up [6144 x
1024] -> silu(gate) * up [3072] -> down [1024 x 3072] + x), 75 in a row over 5 layers' weights, as a frame
chains them (1.7B, bf16). barrier_probe found that Triton kernels with grid-wide barriers lose to the launches
(0.91 ms at best against 0.755, H100): each program loads its rows as it goes, so the weight stream stops
at every barrier. Here one CUDA block per SM keeps the stream going:
  - the block's slice of each stage's weights (its gate and up rows, ~96 KB; its down rows, ~48 KB) lands in
    shared memory by bulk asynchronous copies (`cp.async.bulk`, the copy engine, completion on an mbarrier);
  - the gate/up and down buffers alternate: the next MLP's gate/up rows are requested as soon as this MLP's
    gate/up outputs are written, so they load during the grid barrier and the down stage, and the next down
    rows during the next barrier and gate/up stage;
  - stages compute from shared memory (a warp per output row) with the eager ops' roundings (RMSNorm as
    `add_rms_norm_reference`, products accumulated in float32 and rounded to bf16, silu and the gate, the
    residual add).
The answer (H100, 2026-12-06, BENCHMARKS.md): no. D-stream 0.458 ms, D-loads 0.792, D 1.107, A 0.753.

Variants: D (the kernel), D-loads (the same kernel with the arithmetic skipped: the stream and barriers
alone), D-stream (the weight stream alone, no barriers: the ceiling of this design), against A (the frame's
path, two fused_linear_triton launches per MLP with PDL) and the reference chain. The CUDA source is built
for sm_90a at first run (torch.utils.cpp_extension; nvcc and ninja on the device). Run under `timeout`: a
block that is not resident would make the grid barrier wait forever (the grid is one block per SM, and the
probe checks that the device runs one per SM with this much shared memory).
    timeout 300 python bench/stream_probe.py
"""

import time

import torch
from torch.utils.cpp_extension import load_inline

from kernel_probe import graph_ms
from predictor_chain import CHAIN, EPS, LAYERS, WEIGHT_BYTES, F, H, start

CUDA_SOURCE = r"""
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace {

constexpr int H = 1024, F = 3072, THREADS = 256, WARPS = THREADS / 32;
using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(shared_address(bar)) : "memory");
}

// One arrival that also tells the barrier how many bytes the bulk copies will bring.
__device__ __forceinline__ void mbarrier_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
               :: "r"(shared_address(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" :: "r"(shared_address(bar)), "r"(parity) : "memory");
}

// bytes (a multiple of 16) from global to shared memory by the copy engine; completion counted on `bar`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(shared_address(dst)), "l"(src), "r"(bytes), "r"(shared_address(bar)) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block arrives before any leaves; one zeroed counter per use. The block's writes before it are
// visible to every block after it.
__device__ __forceinline__ void grid_barrier(uint32_t* counter, uint32_t blocks) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    while (load_acquire(counter) < blocks) {
    }
    __threadfence();
  }
  __syncthreads();
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// dot of a bf16 row in shared memory with a float vector in shared memory, over `n` (a multiple of 256)
__device__ __forceinline__ float row_dot(const bf16* row, const float* vec, int n, int lane) {
  float acc = 0.f;
  for (int k = lane * 8; k < n; k += 256) {
    const uint4 packed = *reinterpret_cast<const uint4*>(row + k);
    const bf16* w = reinterpret_cast<const bf16*>(&packed);
    const float4 v0 = *reinterpret_cast<const float4*>(vec + k);
    const float4 v1 = *reinterpret_cast<const float4*>(vec + k + 4);
    acc += __bfloat162float(w[0]) * v0.x + __bfloat162float(w[1]) * v0.y + __bfloat162float(w[2]) * v0.z +
           __bfloat162float(w[3]) * v0.w + __bfloat162float(w[4]) * v1.x + __bfloat162float(w[5]) * v1.y +
           __bfloat162float(w[6]) * v1.z + __bfloat162float(w[7]) * v1.w;
  }
  return warp_sum(acc);
}

// MODE 0: the chain; 1: the weight stream and the barriers, no arithmetic; 2: the weight stream alone.
template <int MODE>
__global__ void __launch_bounds__(THREADS, 1) mlp_chain_kernel(
    bf16* xs, const bf16* norms, const bf16* gate_ups, const bf16* downs, bf16* act, uint32_t* counters,
    int chain, int layers, int gate_rows_max, float eps) {
  extern __shared__ __align__(128) unsigned char shared[];
  const int blocks = gridDim.x, block = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // this block's gate/up outputs [n0, n1) and down rows [r0, r1)
  const int n0 = F * block / blocks, n1 = F * (block + 1) / blocks;
  const int r0 = H * block / blocks, r1 = H * (block + 1) / blocks;
  const uint32_t gate_bytes = (n1 - n0) * H * sizeof(bf16), down_bytes = (r1 - r0) * F * sizeof(bf16);
  bf16* gate_buf = reinterpret_cast<bf16*>(shared);  // gate rows, then up rows at gate_rows_max * H
  bf16* up_buf = gate_buf + gate_rows_max * H;
  bf16* down_buf = up_buf + gate_rows_max * H;
  float* h = reinterpret_cast<float*>(down_buf + (H + blocks - 1) / blocks * F);
  float* a = h + H;
  float* partial = a + F;
  uint64_t* bars = reinterpret_cast<uint64_t*>(partial + WARPS);  // [0]: gate/up, [1]: down

  auto load_gate_up = [&](int i) {
    const bf16* w = gate_ups + static_cast<size_t>(i % layers) * 2 * F * H;
    mbarrier_expect(&bars[0], 2 * gate_bytes);
    bulk_load(gate_buf, w + static_cast<size_t>(n0) * H, gate_bytes, &bars[0]);
    bulk_load(up_buf, w + static_cast<size_t>(F + n0) * H, gate_bytes, &bars[0]);
  };
  auto load_down = [&](int i) {
    const bf16* w = downs + static_cast<size_t>(i % layers) * H * F;
    mbarrier_expect(&bars[1], down_bytes);
    bulk_load(down_buf, w + static_cast<size_t>(r0) * F, down_bytes, &bars[1]);
  };

  if (tid == 0) {
    mbarrier_init(&bars[0]);
    mbarrier_init(&bars[1]);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    load_gate_up(0);
    load_down(0);
  }
  __syncthreads();

  for (int i = 0; i < chain; ++i) {
    const bf16* x = xs + static_cast<size_t>(i) * H;
    bf16* out = xs + static_cast<size_t>(i + 1) * H;
    // RMSNorm of x into h (float values of the bf16 results), every block for itself
    float squares = 0.f;
    for (int k = tid; k < H; k += THREADS) {
      const float v = __bfloat162float(__ldcg(x + k));
      h[k] = v;
      squares += v * v;
    }
    squares = warp_sum(squares);
    if (lane == 0) partial[warp] = squares;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < WARPS; ++w) total += partial[w];
    const float inv = rsqrtf(total / H + eps);
    const bf16* g = norms + static_cast<size_t>(i % layers) * H;
    for (int k = tid; k < H; k += THREADS) h[k] = round_bf16(__bfloat162float(g[k]) * round_bf16(h[k] * inv));
    __syncthreads();

    mbarrier_wait(&bars[0], i & 1);
    if (MODE == 0) {
      for (int j = warp; j < n1 - n0; j += WARPS) {
        const float gate = round_bf16(row_dot(gate_buf + j * H, h, H, lane));
        const float up = round_bf16(row_dot(up_buf + j * H, h, H, lane));
        if (lane == 0) act[n0 + j] = __float2bfloat16_rn(round_bf16(gate / (1.f + __expf(-gate))) * up);
      }
    }
    __syncthreads();  // the gate/up buffer is read: the next MLP's rows may land in it
    if (tid == 0 && i + 1 < chain) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      load_gate_up(i + 1);
    }
    if (MODE < 2) grid_barrier(counters + 2 * i, blocks);

    for (int k = tid; k < F; k += THREADS) a[k] = __bfloat162float(__ldcg(act + k));
    __syncthreads();
    mbarrier_wait(&bars[1], i & 1);
    if (MODE == 0) {
      for (int j = warp; j < r1 - r0; j += WARPS) {
        const float y = round_bf16(row_dot(down_buf + j * F, a, F, lane));
        if (lane == 0) out[r0 + j] = __float2bfloat16_rn(__bfloat162float(__ldcg(x + r0 + j)) + y);
      }
    }
    __syncthreads();
    if (tid == 0 && i + 1 < chain) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      load_down(i + 1);
    }
    if (MODE < 2) grid_barrier(counters + 2 * i + 1, blocks);
  }
}

}  // namespace

int64_t shared_bytes(int64_t blocks) {
  const int64_t gate_rows_max = (F + blocks - 1) / blocks, down_rows_max = (H + blocks - 1) / blocks;
  return 2 * gate_rows_max * H * 2 + down_rows_max * F * 2 + (H + F + WARPS) * 4 + 2 * 8;
}

// Pointers and the stream come from Python as integers (this file needs no torch headers).
void mlp_chain(int64_t xs, int64_t norms, int64_t gate_ups, int64_t downs, int64_t act, int64_t counters,
               int64_t chain, int64_t layers, int64_t blocks, double eps, int64_t mode, int64_t stream) {
  const int64_t bytes = shared_bytes(blocks);
  auto kernel = mode == 0 ? mlp_chain_kernel<0> : mode == 1 ? mlp_chain_kernel<1> : mlp_chain_kernel<2>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess)
    throw std::runtime_error("shared memory of " + std::to_string(bytes) + " bytes refused");
  kernel<<<blocks, THREADS, bytes, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<bf16*>(xs), reinterpret_cast<const bf16*>(norms), reinterpret_cast<const bf16*>(gate_ups),
      reinterpret_cast<const bf16*>(downs), reinterpret_cast<bf16*>(act), reinterpret_cast<uint32_t*>(counters),
      static_cast<int>(chain), static_cast<int>(layers), static_cast<int>((F + blocks - 1) / blocks),
      static_cast<float>(eps));
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string("launch failed: ") + cudaGetErrorString(error));
}

int64_t resident_blocks(int64_t blocks) {
  int count = 0;
  const int64_t bytes = shared_bytes(blocks);
  cudaFuncSetAttribute(mlp_chain_kernel<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&count, mlp_chain_kernel<0>, THREADS, bytes);
  return count;
}
"""

CPP_SOURCE = """
#include <torch/extension.h>
void mlp_chain(int64_t xs, int64_t norms, int64_t gate_ups, int64_t downs, int64_t act, int64_t counters,
               int64_t chain, int64_t layers, int64_t blocks, double eps, int64_t mode, int64_t stream);
int64_t resident_blocks(int64_t blocks);
int64_t shared_bytes(int64_t blocks);
"""


def build():
    began = time.time()
    module = load_inline("qtts_stream_probe", CPP_SOURCE, cuda_sources=CUDA_SOURCE,
                         functions=["mlp_chain", "resident_blocks", "shared_bytes"],
                         extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v"],
                         verbose=False)
    print(f"built in {time.time() - began:.1f} s", flush=True)
    return module


def main():
    dev, dt = "cuda", torch.bfloat16
    module = build()
    sms, norms, gate_ups, downs, x0, ref = start(dev)
    resident = module.resident_blocks(sms)
    print("shared bytes per block", module.shared_bytes(sms), "resident per SM", resident, flush=True)
    if resident < 1:
        print("no block fits on an SM: stopping", flush=True)
        return
    act = torch.zeros(F, device=dev, dtype=dt)
    counters = torch.zeros(2 * CHAIN, device=dev, dtype=torch.int32)
    for mode, label in ((0, "D"), (1, "D-loads"), (2, "D-stream")):
        xs_d = torch.zeros(CHAIN + 1, H, device=dev, dtype=dt)
        xs_d[0] = x0

        def run_d():
            counters.zero_()
            module.mlp_chain(xs_d.data_ptr(), norms.data_ptr(), gate_ups.data_ptr(), downs.data_ptr(),
                             act.data_ptr(), counters.data_ptr(), CHAIN, LAYERS, sms, EPS, mode,
                             torch.cuda.current_stream().cuda_stream)

        began = time.time()
        run_d()
        torch.cuda.synchronize()
        print(f"{label}: first run {time.time() - began:.2f} s", flush=True)
        if mode == 0:
            print("D vs reference, max |diff|", (xs_d.float() - ref.float()).abs().max().item(), flush=True)
        ms = graph_ms(run_d)
        print(f"{label} ms (75 MLPs, graph) {ms:.3f}, weights at {WEIGHT_BYTES / ms / 1e9:.2f} TB/s", flush=True)


if __name__ == "__main__":
    main()
