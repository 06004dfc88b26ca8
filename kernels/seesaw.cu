// Seesaw loss, one warp per row: a loss pass and a gradient pass.
//
// The row algorithm and its derivation live in src/math.rs; this file follows
// it (class_forward, class_grad, objectness_row, Adjustment). Per row:
//   loss pass      m, lse = max and logsumexp of z          (online, lane-strided)
//                  lse' = logsumexp(z'), summed against a shift that bounds
//                  every z' (math.rs, "Shifts instead of an online maximum")
//   gradient pass  g_j = scale * (exp(z'_j - lse') - [j == y])
// Three kernels use them: seesaw_forward (loss pass; keeps lse and lse' per
// row for the autograd node's backward), seesaw_backward (gradient pass times
// the upstream gradient), seesaw_fused (both, for forward_backward: the
// gradient pass re-reads a row the warp has just pulled through L1/L2, so
// DRAM sees one read of the logits and one write of the gradient).
//
// Every kernel takes the call's parameter block (kernels/seesaw_params.h) by
// value as its first argument.
//
// Compiled at run time by NVRTC, which has no default include path: no CUDA
// headers, so the f16 / bf16 conversions are written here; the parameter
// header is handed to NVRTC by name (src/fused/cuda.rs).

#include "seesaw_params.h"

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;

struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)
#define FULL_MASK 0xffffffffu

// ---- storage kinds <-> f32 ---------------------------------------------------

// IEEE half conversions: one PTX instruction each on the device. The host
// emulator (kernels/emulator.cpp) defines SEESAW_HOST_EMULATION and brings
// its own, as it has no PTX.
#ifndef SEESAW_HOST_EMULATION
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#endif

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16_t* p) {
    return __int_as_float(((int)p->bits) << 16);
}
__device__ __forceinline__ float load(const f16_t* p) { return f16_to_f32(p->bits); }

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
__device__ __forceinline__ void store(f16_t* p, float v) { p->bits = f32_to_f16(v); }

// ---- online logsumexp of pass 1 ----------------------------------------------

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

// The warp's (max, sum), the same in every lane.
__device__ __forceinline__ Lse warp_lse(Lse a) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        Lse b = {__shfl_xor_sync(FULL_MASK, a.max, offset), __shfl_xor_sync(FULL_MASK, a.sum, offset)};
        a = lse_merge(a, b);
    }
    return a;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// ---- one row (math.rs: Adjustment, class_forward, class_grad, objectness_row) -

struct Adjustment {
    float p, q, log_n_y, threshold;  // threshold = lse + max(z_y - lse, log eps)
};

__device__ __forceinline__ Adjustment make_adjustment(const SeesawParams& k, float lse, float z_y, float log_n_y) {
    Adjustment a = {k.p, k.q, log_n_y, lse + fmaxf(z_y - lse, k.log_eps)};
    return a;
}

// z'_j of a negative class: p min(0, log n_j - log n_y) + q max(0, z_j - threshold).
__device__ __forceinline__ float adjusted(const Adjustment& a, float z_j, float log_n_j) {
    float m = log_n_j - a.log_n_y;
    float c = z_j - a.threshold;
    return z_j + a.p * (m < 0.0f ? m : 0.0f) + a.q * (c > 0.0f ? c : 0.0f);
}

struct RowStats {
    float lse, lse_adjusted;
};

// The loss pass of a class row: returns the unweighted loss, fills `stats`.
template <typename T>
__device__ __forceinline__ float class_forward(const SeesawParams& k, const T* __restrict__ z, int C, int label,
                                               const float* __restrict__ log_counts, int lane, RowStats& stats) {
    Lse first = {NEG_INF, 0.0f};
    for (int j = lane; j < C; j += 32) lse_push(first, load(z + j));
    first = warp_lse(first);
    const float lse = first.max + logf(first.sum);
    const float m = first.max == NEG_INF ? 0.0f : first.max;
    const float z_y = load(z + label);
    const Adjustment adj = make_adjustment(k, lse, z_y, log_counts[label]);

    const float shift = lse + k.q * fmaxf(m - adj.threshold, 0.0f);
    float part = 0.0f;
    for (int j = lane; j < C; j += 32) {
        float zj = load(z + j);
        part += expf((j == label ? zj : adjusted(adj, zj, log_counts[j])) - shift);
    }
    const float sum = warp_sum(part);
    float lse_adjusted = shift + logf(sum);
    if (sum < SEESAW_UNDERFLOW) {  // warp-uniform: every lane holds the same sum
        Lse second = {NEG_INF, 0.0f};
        for (int j = lane; j < C; j += 32) {
            float zj = load(z + j);
            lse_push(second, j == label ? zj : adjusted(adj, zj, log_counts[j]));
        }
        second = warp_lse(second);
        if (second.max != NEG_INF) lse_adjusted = second.max + logf(second.sum);
    }
    stats.lse = lse;
    stats.lse_adjusted = lse_adjusted;
    return lse_adjusted - z_y;
}

// The gradient pass of a class row: g = scale * (softmax(z') - onehot(label)).
template <typename T>
__device__ __forceinline__ void class_grad(const SeesawParams& k, const T* __restrict__ z, int C, int label,
                                           const float* __restrict__ log_counts, RowStats stats, float scale,
                                           T* __restrict__ g, int lane) {
    const float z_y = load(z + label);
    const Adjustment adj = make_adjustment(k, stats.lse, z_y, log_counts[label]);
    for (int j = lane; j < C; j += 32) {
        float zj = load(z + j);
        float v = j == label ? expf(z_y - stats.lse_adjusted) - 1.0f
                             : expf(adjusted(adj, zj, log_counts[j]) - stats.lse_adjusted);
        store(g + j, scale * v);
    }
}

// Objectness of a detection row: 2-way cross-entropy; writes the scaled
// gradient when g is not null.
template <typename T>
__device__ __forceinline__ float objectness_row(float fg, float bg, bool background, T* __restrict__ g,
                                                float scale) {
    float m = fmaxf(fg, bg);
    m = m == NEG_INF ? 0.0f : m;
    const float lse = m + logf(expf(fg - m) + expf(bg - m));
    if (g) {
        store(g, scale * (expf(fg - lse) - (background ? 0.0f : 1.0f)));
        store(g + 1, scale * (expf(bg - lse) - (background ? 1.0f : 0.0f)));
    }
    return lse - (background ? bg : fg);
}

// ---- the kernels --------------------------------------------------------------
//
// k          the call's parameters: k.rows rows, k.classes = C, k.detection,
//            k.row_stride (elements between rows of logits), the Seesaw
//            constants and k.loss_weight
// logits     [N, width] with row stride k.row_stride, unit column stride
// grad       [N, width] contiguous, written whole
// labels     [N] int64; out-of-range labels never index memory: their row gets
//            NaN losses and a zero gradient (the host checks labels first)
// weights    [N] f32 or null
// log_counts [C] f32, log(max(n, 1))
// class_loss [N] f32: unweighted, 0 for background rows
// obj_loss   [N] f32 (detection) or null
// stats      [N, 2] f32: lse and lse' of each class row
// up_cls     upstream multiplier of the class gradient: up_cls[row * up_cls_stride],
//            stride 0 for one shared value; null when the class part is unused
// up_obj     the same for the objectness gradient
// width = C + 2 (detection, objectness in columns C, C+1) or C.

struct Row {
    i64 index;
    int lane;
    bool valid;  // label in range
    int label;
};

__device__ __forceinline__ Row row_of(const SeesawParams& k, const i64* __restrict__ labels) {
    Row r;
    r.lane = threadIdx.x & 31;
    r.index = (i64)blockIdx.x * SEESAW_WARPS_PER_BLOCK + (threadIdx.x >> 5);
    r.valid = false;
    r.label = 0;
    if (r.index < k.rows) {
        const i64 label = labels[r.index];
        const i64 max_label = k.detection ? k.classes : k.classes - 1;
        r.valid = label >= 0 && label <= max_label;
        r.label = r.valid ? (int)label : 0;
    }
    return r;
}

__device__ __forceinline__ int width_of(const SeesawParams& k) { return k.detection ? k.classes + 2 : k.classes; }

__device__ __forceinline__ float upstream(const float* __restrict__ up, i64 stride, i64 row) {
    return up ? up[row * stride] : 0.0f;
}

// The upstream multipliers of a gradient pass.
struct Upstream {
    const float* cls;
    i64 cls_stride;
    const float* obj;
    i64 obj_stride;
};

// The loss pass (and, with `grad`, the gradient pass) of one row.
template <typename T>
__device__ __forceinline__ void seesaw_row(const SeesawParams& k, const T* __restrict__ logits, T* __restrict__ grad,
                                           const i64* __restrict__ labels, const float* __restrict__ weights,
                                           const float* __restrict__ log_counts, float* __restrict__ class_loss,
                                           float* __restrict__ obj_loss, float* __restrict__ stats_out,
                                           Upstream up) {
    const Row r = row_of(k, labels);
    if (r.index >= k.rows) return;  // uniform across the warp
    const int C = k.classes;
    const int width = width_of(k);
    const T* z = logits + r.index * k.row_stride;
    T* g = grad ? grad + r.index * (i64)width : (T*)0;
    if (!r.valid) {
        if (g)
            for (int j = r.lane; j < width; j += 32) store(g + j, 0.0f);
        if (r.lane == 0) {
            if (class_loss) class_loss[r.index] = QNAN;
            if (k.detection && obj_loss) obj_loss[r.index] = QNAN;
            if (stats_out) stats_out[2 * r.index] = stats_out[2 * r.index + 1] = QNAN;
        }
        return;
    }
    const float scale = k.loss_weight * (weights ? weights[r.index] : 1.0f);
    if (r.label < C) {
        RowStats stats;
        float loss = class_forward(k, z, C, r.label, log_counts, r.lane, stats);
        if (r.lane == 0) {
            if (class_loss) class_loss[r.index] = loss;
            if (stats_out) {
                stats_out[2 * r.index] = stats.lse;
                stats_out[2 * r.index + 1] = stats.lse_adjusted;
            }
        }
        if (g) class_grad(k, z, C, r.label, log_counts, stats, scale * upstream(up.cls, up.cls_stride, r.index), g, r.lane);
    } else {
        if (g)
            for (int j = r.lane; j < C; j += 32) store(g + j, 0.0f);
        if (r.lane == 0) {
            if (class_loss) class_loss[r.index] = 0.0f;
            if (stats_out) stats_out[2 * r.index] = stats_out[2 * r.index + 1] = QNAN;
        }
    }
    if (k.detection && r.lane == 0) {
        float loss = objectness_row(load(z + C), load(z + C + 1), r.label == C, g ? g + C : (T*)0,
                                    scale * upstream(up.obj, up.obj_stride, r.index));
        if (obj_loss) obj_loss[r.index] = loss;
    }
}

// The gradient pass alone, from the loss pass's stats.
template <typename T>
__device__ __forceinline__ void seesaw_grad_row(const SeesawParams& k, const T* __restrict__ logits,
                                                T* __restrict__ grad, const i64* __restrict__ labels,
                                                const float* __restrict__ weights,
                                                const float* __restrict__ log_counts,
                                                const float* __restrict__ stats_in, Upstream up) {
    const Row r = row_of(k, labels);
    if (r.index >= k.rows) return;
    const int C = k.classes;
    const int width = width_of(k);
    const T* z = logits + r.index * k.row_stride;
    T* g = grad + r.index * (i64)width;
    if (!r.valid) {
        for (int j = r.lane; j < width; j += 32) store(g + j, 0.0f);
        return;
    }
    const float scale = k.loss_weight * (weights ? weights[r.index] : 1.0f);
    if (r.label < C) {
        RowStats stats = {stats_in[2 * r.index], stats_in[2 * r.index + 1]};
        class_grad(k, z, C, r.label, log_counts, stats, scale * upstream(up.cls, up.cls_stride, r.index), g, r.lane);
    } else {
        for (int j = r.lane; j < C; j += 32) store(g + j, 0.0f);
    }
    if (k.detection && r.lane == 0) {
        objectness_row(load(z + C), load(z + C + 1), r.label == C, g + C,
                       scale * upstream(up.obj, up.obj_stride, r.index));
    }
}

#define SEESAW_KERNELS(SUFFIX, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                   \
        seesaw_forward_##SUFFIX(SeesawParams k, const T* logits, const i64* labels, const float* log_counts,    \
                                float* class_loss, float* obj_loss, float* stats) {                             \
        const Upstream none = {(const float*)0, 0, (const float*)0, 0};                                         \
        seesaw_row<T>(k, logits, (T*)0, labels, (const float*)0, log_counts, class_loss, obj_loss, stats, none); \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                   \
        seesaw_backward_##SUFFIX(SeesawParams k, const T* logits, T* grad, const i64* labels,                   \
                                 const float* weights, const float* log_counts, const float* stats,             \
                                 const float* up_cls, i64 up_cls_stride, const float* up_obj,                   \
                                 i64 up_obj_stride) {                                                           \
        const Upstream up = {up_cls, up_cls_stride, up_obj, up_obj_stride};                                     \
        seesaw_grad_row<T>(k, logits, grad, labels, weights, log_counts, stats, up);                            \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                   \
        seesaw_fused_##SUFFIX(SeesawParams k, const T* logits, T* grad, const i64* labels, const float* weights, \
                              const float* log_counts, float* class_loss, float* obj_loss, const float* up_cls,  \
                              i64 up_cls_stride, const float* up_obj, i64 up_obj_stride) {                      \
        const Upstream up = {up_cls, up_cls_stride, up_obj, up_obj_stride};                                     \
        seesaw_row<T>(k, logits, grad, labels, weights, log_counts, class_loss, obj_loss, (float*)0, up);       \
    }

SEESAW_KERNELS(f32, float)
SEESAW_KERNELS(f16, f16_t)
SEESAW_KERNELS(bf16, bf16_t)

// ---- cumulative counts -------------------------------------------------------
//
// counts[label] += step for every row (step 1 to count a batch, -1 to take it
// back out), on the device. Labels in a detection batch are mostly
// background: lanes holding the same label are combined first
// (__match_any_sync), so a warp issues one atomic per distinct label.
// Out-of-range labels are skipped. The counts are int64 added as u64: two's
// complement makes a negative step a subtraction.

extern "C" __global__ void seesaw_count(const i64* __restrict__ labels, i64 n_rows, i64 n_counters, i64 step,
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
        if (valid && (threadIdx.x & 31) == leader) atomicAdd(counts + label, (u64)(step * (i64)__popc(same)));
    }
}
