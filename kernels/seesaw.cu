// Seesaw loss, forward and backward fused: one warp per row.
//
// The row algorithm and its derivation live in src/math.rs; this file follows
// it line for line (class_row, objectness_row, OnlineLse). Per row:
//   pass 1  lse = logsumexp(z)                       (online, lane-strided)
//   pass 2  lse' = logsumexp(z'), z'_j = z_j + log M_j + log C_j
//   pass 3  g_j = scale * (exp(z'_j - lse') - [j == y])
// Passes 2 and 3 re-read the row, which a warp has just pulled through L1/L2,
// so DRAM sees one read of the logits and one write of the gradient.
//
// Compiled at run time by NVRTC, which has no default include path: no CUDA
// headers, so the f16 / bf16 conversions are written here.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;

struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)
#define FULL_MASK 0xffffffffu
#define WARPS_PER_BLOCK 8

// ---- storage kinds <-> f32 ---------------------------------------------------

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16_t* p) {
    return __int_as_float(((int)p->bits) << 16);
}
__device__ __forceinline__ float load(const f16_t* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_t* p, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a quiet NaN
        p->bits = 0x7fc0;
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    p->bits = (u16)(u >> 16);
}
__device__ __forceinline__ void store(f16_t* p, float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->bits = h;
}

// ---- online logsumexp (math.rs: OnlineLse) -----------------------------------

struct Lse {
    float max;
    float sum;
};

__device__ __forceinline__ void lse_push(Lse& a, float x) {
    if (x > a.max) {
        a.sum = a.sum * expf(a.max - x) + 1.0f;
        a.max = x;
    } else if (x != NEG_INF) {
        a.sum += expf(x - a.max);  // a NaN x makes the sum NaN
    }
}

// Merges two partial sums; a side that saw no finite value has max = -inf
// and contributes its sum times 0 (which keeps a NaN sum NaN).
__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    float m = fmaxf(a.max, b.max);
    float ea = a.max == NEG_INF ? 0.0f : expf(a.max - m);
    float eb = b.max == NEG_INF ? 0.0f : expf(b.max - m);
    Lse r = {m, a.sum * ea + b.sum * eb};
    return r;
}

__device__ __forceinline__ float warp_lse(Lse a) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        Lse b = {__shfl_xor_sync(FULL_MASK, a.max, offset), __shfl_xor_sync(FULL_MASK, a.sum, offset)};
        a = lse_merge(a, b);
    }
    return a.max + logf(a.sum);
}

// ---- one row (math.rs: adjustment, class_row, objectness_row) ----------------

struct Params {
    float p, q, log_eps;
};

__device__ __forceinline__ float adjustment(const Params& k, float log_n_j, float log_n_y, float rel_j,
                                            float rel_self) {
    float a = 0.0f;
    if (k.p > 0.0f) a += fminf(k.p * (log_n_j - log_n_y), 0.0f);
    if (k.q > 0.0f) a += fmaxf(k.q * (rel_j - rel_self), 0.0f);
    return a;
}

template <typename T>
__device__ __forceinline__ float class_row(const Params& k, const T* __restrict__ z, int C, int label,
                                           const float* __restrict__ log_counts, T* __restrict__ g,
                                           float scale, int lane) {
    Lse first = {NEG_INF, 0.0f};
    for (int j = lane; j < C; j += 32) lse_push(first, load(z + j));
    const float lse = warp_lse(first);
    const float z_y = load(z + label);
    const float rel_self = fmaxf(z_y - lse, k.log_eps);
    const float log_n_y = log_counts[label];

    Lse second = {NEG_INF, 0.0f};
    for (int j = lane; j < C; j += 32) {
        float zj = load(z + j);
        float a = j == label ? zj : zj + adjustment(k, log_counts[j], log_n_y, zj - lse, rel_self);
        lse_push(second, a);
    }
    const float lse_adjusted = warp_lse(second);

    for (int j = lane; j < C; j += 32) {
        float zj = load(z + j);
        float a = j == label ? zj : zj + adjustment(k, log_counts[j], log_n_y, zj - lse, rel_self);
        store(g + j, scale * (expf(a - lse_adjusted) - (j == label ? 1.0f : 0.0f)));
    }
    return lse_adjusted - z_y;
}

template <typename T>
__device__ __forceinline__ float objectness_row(float fg, float bg, bool background, T* __restrict__ g,
                                                float scale) {
    Lse a = {NEG_INF, 0.0f};
    lse_push(a, fg);
    lse_push(a, bg);
    const float lse = a.max + logf(a.sum);
    store(g, scale * (expf(fg - lse) - (background ? 0.0f : 1.0f)));
    store(g + 1, scale * (expf(bg - lse) - (background ? 1.0f : 0.0f)));
    return lse - (background ? bg : fg);
}

// ---- the fused kernel --------------------------------------------------------
//
// logits     [N, width] with row stride `row_stride` (elements), unit column stride
// grad       [N, width] contiguous, written whole
// labels     [N] int64; out-of-range labels never index memory: their row gets
//            NaN losses and a zero gradient (the host checks labels first)
// weights    [N] f32 or null
// log_counts [C] f32, log(max(n, 1))
// class_loss [N] f32: unweighted, 0 for background rows
// obj_loss   [N] f32 (detection) or null
// width = C + 2 (detection, objectness in columns C, C+1) or C.

template <typename T>
__device__ __forceinline__ void seesaw_fused(const T* __restrict__ logits, i64 row_stride, T* __restrict__ grad,
                                             const i64* __restrict__ labels, const float* __restrict__ weights,
                                             const float* __restrict__ log_counts, float* __restrict__ class_loss,
                                             float* __restrict__ obj_loss, i64 n_rows, int C, int detection,
                                             float p, float q, float log_eps, float loss_weight) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= n_rows) return;  // uniform across the warp
    const int width = detection ? C + 2 : C;
    const T* z = logits + row * row_stride;
    T* g = grad + row * (i64)width;
    const i64 label = labels[row];
    const i64 max_label = detection ? C : C - 1;

    if (label < 0 || label > max_label) {
        for (int j = lane; j < width; j += 32) store(g + j, 0.0f);
        if (lane == 0) {
            class_loss[row] = QNAN;
            if (detection) obj_loss[row] = QNAN;
        }
        return;
    }
    const float scale = loss_weight * (weights ? weights[row] : 1.0f);
    const Params k = {p, q, log_eps};
    if (label < C) {
        float loss = class_row(k, z, C, (int)label, log_counts, g, scale, lane);
        if (lane == 0) class_loss[row] = loss;
    } else {
        for (int j = lane; j < C; j += 32) store(g + j, 0.0f);
        if (lane == 0) class_loss[row] = 0.0f;
    }
    if (detection && lane == 0) {
        obj_loss[row] = objectness_row(load(z + C), load(z + C + 1), label == C, g + C, scale);
    }
}

#define SEESAW_FUSED(NAME, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * WARPS_PER_BLOCK)                                     \
        NAME(const T* logits, i64 row_stride, T* grad, const i64* labels, const float* weights,            \
             const float* log_counts, float* class_loss, float* obj_loss, i64 n_rows, int C, int detection, \
             float p, float q, float log_eps, float loss_weight) {                                         \
        seesaw_fused<T>(logits, row_stride, grad, labels, weights, log_counts, class_loss, obj_loss, n_rows, \
                        C, detection, p, q, log_eps, loss_weight);                                         \
    }

SEESAW_FUSED(seesaw_fused_f32, float)
SEESAW_FUSED(seesaw_fused_f16, f16_t)
SEESAW_FUSED(seesaw_fused_bf16, bf16_t)

// ---- cumulative counts -------------------------------------------------------
//
// counts[label] += 1 for every row, on the device. Labels in a detection batch
// are mostly background: lanes holding the same label are combined first
// (__match_any_sync), so a warp issues one atomic per distinct label.
// Out-of-range labels are skipped.

extern "C" __global__ void seesaw_count(const i64* __restrict__ labels, i64 n_rows, i64 n_counters,
                                        u64* __restrict__ counts) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    // Every lane of a warp runs the same number of iterations (rounded up),
    // so the warp-wide match below sees all 32 lanes.
    const i64 rounded = (n_rows + 31) / 32 * 32;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < rounded; i += stride) {
        const i64 label = i < n_rows ? labels[i] : -1;
        const bool valid = label >= 0 && label < n_counters;
        const unsigned same = __match_any_sync(FULL_MASK, valid ? label : -1);
        const int leader = __ffs(same) - 1;
        if (valid && (threadIdx.x & 31) == leader) atomicAdd(counts + label, (u64)__popc(same));
    }
}
