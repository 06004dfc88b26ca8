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
// the upstream gradient), seesaw_forward_backward (both, for forward_backward: the
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
    // The label's own term is in lse', so the exact loss is >= 0: a rounding
    // below it is 0 (a NaN stays NaN, as the comparison is false for it).
    const float loss = lse_adjusted - z_y;
    return loss < 0.0f ? 0.0f : loss;
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

// ---- one call's kernels ---------------------------------------------------------
//
// A call launches seesaw_prepare, then the row kernels: seesaw_forward (the
// loss pass, keeping lse and lse' per row for the autograd node's backward)
// and seesaw_backward (the gradient pass times the upstream gradient), or
// seesaw_forward_backward (both, for forward_backward: the gradient pass re-reads a row
// the warp has just pulled through L1/L2, so DRAM sees one read of the
// logits and one write of the gradient). Everything O(N + C) of the call is
// in them: no other launch and no host read is needed.
//
// k          the call's parameters: k.rows rows, k.classes = C, k.detection,
//            k.row_stride (elements between rows of logits), the Seesaw
//            constants, k.loss_weight and the reduction
// logits     [N, width] with row stride k.row_stride, unit column stride
// grad       [N, width] contiguous, written whole
// labels     [N] int64
// weights    [N] f32 or null
// counts     [n_counters] int64, the loss's cumulative counts
// log_counts [C] f32, log(max(n, 1)), written by seesaw_prepare
// state      [SEESAW_STATE_LEN] int64, written by seesaw_prepare
// error      [SEESAW_ERROR_LEN] int64, the loss's error record
// row_class  [N] f32: loss_weight * weight * class loss per row (0 for
//            background rows), the output of Reduction::None
// row_obj    [N] f32: the same for objectness (detection) or null
// stats      [N, 2] f32: lse and lse' of each class row
// partials   [2 * blocks] f32: each block's sums, for the last block
// out_class  [1] f32: the reduced class loss (Sum, Mean) or null (None)
// out_obj    [1] f32: the reduced objectness loss or null
// up_cls     upstream gradient of the class output: up_cls[row * up_cls_stride],
//            stride 0 for a reduced output; null when that output is unused
// up_obj     the same for the objectness output
// width = C + 2 (detection, objectness in columns C, C+1) or C.
//
// A bad batch (a label out of range, a weight that is not finite, a negative
// count) is found by seesaw_prepare: nothing is counted, the error record
// takes the first problem if it is empty, and the row kernels give every row
// a NaN loss and a zero gradient. No bad value ever indexes memory.
//
// Reductions are deterministic: every block sums its rows in a fixed order
// into `partials`, and the last block to finish (a ticket in `state`) sums
// the partials in a fixed order. No float atomics.

#define REDUCTION_NONE 0
#define REDUCTION_MEAN 2

__device__ __forceinline__ bool label_ok(const SeesawParams& k, i64 label) {
    return label >= 0 && label <= (k.detection ? (i64)k.classes : (i64)k.classes - 1);
}

// Not NaN and not infinite, by the bits: no dependence on compiler flags.
__device__ __forceinline__ bool finite_f32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// What a mean of one part divides by: avg_factor + f32 epsilon when given,
// else the part's rows (the positive rows for a detection head's classes).
__device__ __forceinline__ float divisor(const SeesawParams& k, const i64* __restrict__ state, bool classes) {
    if (k.reduction != REDUCTION_MEAN) return 1.0f;
    if (k.has_avg_factor) return (float)(k.avg_factor + 1.1920928955078125e-07);
    const i64 rows = classes && k.detection ? state[SEESAW_STATE_POSITIVE] : k.rows;
    return (float)(rows > 1 ? rows : 1);
}

// ---- seesaw_prepare: checks, counts, log counts, positive rows (one block) ----

extern "C" __global__ void __launch_bounds__(SEESAW_PREPARE_THREADS)
    seesaw_prepare(SeesawParams k, const i64* __restrict__ labels, const float* __restrict__ weights,
                   u64* __restrict__ counts, i64 n_counters, float* __restrict__ log_counts,
                   i64* __restrict__ state, i64* __restrict__ error) {
    const i64 NONE = 0x7fffffffffffffffll;
    __shared__ long long first_bad_row;
    __shared__ long long first_bad_counter;
    __shared__ unsigned long long positives;
    const int t = threadIdx.x;
    // Counts are read with volatile loads: the atomics below update them in
    // L2, and a plain load could hit this SM's stale L1 copy.
    volatile const long long* count_values = (volatile const long long*)counts;
    if (t == 0) {
        first_bad_row = NONE;
        first_bad_counter = NONE;
        positives = 0;
    }
    __syncthreads();
    unsigned long long mine = 0;
    for (i64 i = t; i < k.rows; i += blockDim.x) {
        const i64 label = labels[i];
        if (!label_ok(k, label) || (weights && !finite_f32(weights[i]))) atomicMin(&first_bad_row, i);
        mine += label >= 0 && label < k.classes;
    }
    // A count is bad when negative, or close enough to int64's limit that
    // this batch could overflow it.
    const i64 limit = NONE - k.rows;
    for (i64 j = t; j < n_counters; j += blockDim.x) {
        const long long v = count_values[j];
        if (v < 0 || v > limit) atomicMin(&first_bad_counter, j);
    }
    if (mine) atomicAdd(&positives, mine);
    __syncthreads();
    const bool bad = first_bad_row != NONE || first_bad_counter != NONE;  // the same in every thread
    if (!bad) {
        // Every lane of a warp runs the same number of iterations (rounded
        // up), so the warp-wide match sees all 32 lanes; lanes holding the
        // same label are combined, one atomic per distinct label.
        const i64 rounded = (k.rows + 31) / 32 * 32;
        for (i64 i = t; i < rounded; i += blockDim.x) {
            const i64 label = i < k.rows ? labels[i] : -1;
            const unsigned same = __match_any_sync(FULL_MASK, label);
            if (label >= 0 && (t & 31) == __ffs(same) - 1) atomicAdd(counts + label, (u64)__popc(same));
        }
    }
    __syncthreads();
    for (i64 j = t; j < k.classes; j += blockDim.x) {
        const long long n = count_values[j];
        log_counts[j] = logf(n > 1 ? (float)n : 1.0f);
    }
    if (t == 0) {
        state[SEESAW_STATE_BAD] = bad;
        state[SEESAW_STATE_POSITIVE] = (i64)positives;
        state[SEESAW_STATE_TICKET] = 0;
        volatile i64* record = error;
        if (bad && record[SEESAW_ERROR_SET] == 0) {
            if (first_bad_row != NONE) {
                const i64 label = labels[first_bad_row];
                const bool label_bad = !label_ok(k, label);
                record[SEESAW_ERROR_KIND] = label_bad ? SEESAW_ERROR_LABEL : SEESAW_ERROR_WEIGHT;
                record[SEESAW_ERROR_ROW] = first_bad_row;
                record[SEESAW_ERROR_VALUE] = label_bad ? label : (i64)__float_as_uint(weights[first_bad_row]);
            } else {
                record[SEESAW_ERROR_KIND] = SEESAW_ERROR_COUNT;
                record[SEESAW_ERROR_ROW] = first_bad_counter;
                record[SEESAW_ERROR_VALUE] = count_values[first_bad_counter];
            }
            // The record's fields reach the host before its flag does.
            __threadfence_system();
            record[SEESAW_ERROR_SET] = 1;
        }
    }
}

// ---- the row kernels -------------------------------------------------------------

struct Row {
    i64 index;
    int lane;
    bool present;  // index < rows: the warp has a row (uniform across it)
    bool valid;    // present, the batch is good and the label in range
    int label;
};

__device__ __forceinline__ Row row_of(const SeesawParams& k, const i64* __restrict__ labels,
                                      const i64* __restrict__ state) {
    Row r;
    r.lane = threadIdx.x & 31;
    r.index = (i64)blockIdx.x * SEESAW_WARPS_PER_BLOCK + (threadIdx.x >> 5);
    r.present = r.index < k.rows;
    r.valid = false;
    r.label = 0;
    if (r.present) {
        const i64 label = labels[r.index];
        r.valid = state[SEESAW_STATE_BAD] == 0 && label_ok(k, label);
        r.label = r.valid ? (int)label : 0;
    }
    return r;
}

__device__ __forceinline__ int width_of(const SeesawParams& k) { return k.detection ? k.classes + 2 : k.classes; }

// The upstream multipliers of a gradient pass.
struct Upstream {
    const float* cls;
    i64 cls_stride;
    const float* obj;
    i64 obj_stride;
};

__device__ __forceinline__ float upstream(const float* __restrict__ up, i64 stride, i64 row) {
    return up ? up[row * stride] : 0.0f;
}

// The outputs of a loss pass.
struct LossOut {
    float* row_class;
    float* row_obj;
    float* stats;
    float* partials;
    float* out_class;
    float* out_obj;
};

// The loss pass of one row (and, with `g`, its gradient pass scaled by
// `grad_cls` and `grad_obj`); returns the row's (class, objectness) values.
template <typename T>
__device__ __forceinline__ void loss_row(const SeesawParams& k, const Row& r, const T* __restrict__ z,
                                         T* __restrict__ g, const float* __restrict__ log_counts, float scale,
                                         float grad_cls, float grad_obj, const LossOut& out, float& v_class,
                                         float& v_obj) {
    const int C = k.classes;
    if (r.label < C) {
        RowStats stats;
        const float loss = class_forward(k, z, C, r.label, log_counts, r.lane, stats);
        v_class = scale * loss;
        if (r.lane == 0 && out.stats) {
            out.stats[2 * r.index] = stats.lse;
            out.stats[2 * r.index + 1] = stats.lse_adjusted;
        }
        if (g) class_grad(k, z, C, r.label, log_counts, stats, scale * grad_cls, g, r.lane);
    } else {
        v_class = 0.0f;
        if (r.lane == 0 && out.stats) out.stats[2 * r.index] = out.stats[2 * r.index + 1] = QNAN;
        if (g)
            for (int j = r.lane; j < C; j += 32) store(g + j, 0.0f);
    }
    v_obj = 0.0f;
    if (k.detection && r.lane == 0)
        v_obj = scale * objectness_row(load(z + C), load(z + C + 1), r.label == C, g ? g + C : (T*)0,
                                       scale * grad_obj);
}

// Block sums of the rows' values in a fixed order, and in the last block to
// finish, the sums of all blocks in a fixed order divided by the means'
// divisors. Every thread of the block calls it.
__device__ __forceinline__ void reduce_rows(const SeesawParams& k, const i64* __restrict__ state, i64* ticket,
                                            const LossOut& out, float v_class, float v_obj) {
    __shared__ float warp_class[SEESAW_WARPS_PER_BLOCK];
    __shared__ float warp_obj[SEESAW_WARPS_PER_BLOCK];
    __shared__ bool last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        warp_class[warp] = v_class;
        warp_obj[warp] = v_obj;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float c = 0.0f, o = 0.0f;
        for (int w = 0; w < SEESAW_WARPS_PER_BLOCK; ++w) {
            c += warp_class[w];
            o += warp_obj[w];
        }
        out.partials[2 * blockIdx.x] = c;
        out.partials[2 * blockIdx.x + 1] = o;
        __threadfence();  // the partials are visible before the ticket is taken
        last = atomicAdd((u64*)ticket, 1ull) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && warp == 0) {
        volatile const float* partials = out.partials;
        float c = 0.0f, o = 0.0f;
        for (unsigned b = lane; b < gridDim.x; b += 32) {
            c += partials[2 * b];
            o += partials[2 * b + 1];
        }
        c = warp_sum(c);
        o = warp_sum(o);
        if (lane == 0) {
            *out.out_class = c / divisor(k, state, true);
            if (out.out_obj) *out.out_obj = o / divisor(k, state, false);
        }
    }
}

// The loss pass over a block's rows (and, with `grad`, the gradient pass,
// with the upstream gradient `up` of the outputs), then the reduction.
template <typename T>
__device__ __forceinline__ void seesaw_loss_block(const SeesawParams& k, const T* __restrict__ logits,
                                                  T* __restrict__ grad, const i64* __restrict__ labels,
                                                  const float* __restrict__ weights,
                                                  const float* __restrict__ log_counts, i64* __restrict__ state,
                                                  const LossOut& out, Upstream up) {
    const Row r = row_of(k, labels, state);
    float v_class = 0.0f, v_obj = 0.0f;
    if (r.present) {  // uniform across the warp
        const T* z = logits + r.index * k.row_stride;
        T* g = grad ? grad + r.index * (i64)width_of(k) : (T*)0;
        if (r.valid) {
            const float scale = k.loss_weight * (weights ? weights[r.index] : 1.0f);
            const float g_cls = upstream(up.cls, up.cls_stride, r.index) / divisor(k, state, true);
            const float g_obj = upstream(up.obj, up.obj_stride, r.index) / divisor(k, state, false);
            loss_row(k, r, z, g, log_counts, scale, g_cls, g_obj, out, v_class, v_obj);
        } else {
            v_class = v_obj = QNAN;
            if (g)
                for (int j = r.lane; j < width_of(k); j += 32) store(g + j, 0.0f);
            if (r.lane == 0 && out.stats) out.stats[2 * r.index] = out.stats[2 * r.index + 1] = QNAN;
        }
        if (r.lane == 0) {
            if (out.row_class) out.row_class[r.index] = v_class;
            if (k.detection && out.row_obj) out.row_obj[r.index] = v_obj;
        }
    }
    if (out.out_class) reduce_rows(k, state, state + SEESAW_STATE_TICKET, out, v_class, v_obj);  // grid-uniform
}

// The gradient pass alone, from the loss pass's stats.
template <typename T>
__device__ __forceinline__ void seesaw_grad_block(const SeesawParams& k, const T* __restrict__ logits,
                                                  T* __restrict__ grad, const i64* __restrict__ labels,
                                                  const float* __restrict__ weights,
                                                  const float* __restrict__ log_counts,
                                                  const i64* __restrict__ state, const float* __restrict__ stats_in,
                                                  Upstream up) {
    const Row r = row_of(k, labels, state);
    if (!r.present) return;  // uniform across the warp; no barrier below
    const int C = k.classes;
    const T* z = logits + r.index * k.row_stride;
    T* g = grad + r.index * (i64)width_of(k);
    if (!r.valid) {
        for (int j = r.lane; j < width_of(k); j += 32) store(g + j, 0.0f);
        return;
    }
    const float scale = k.loss_weight * (weights ? weights[r.index] : 1.0f);
    const float g_cls = upstream(up.cls, up.cls_stride, r.index) / divisor(k, state, true);
    if (r.label < C) {
        RowStats stats = {stats_in[2 * r.index], stats_in[2 * r.index + 1]};
        class_grad(k, z, C, r.label, log_counts, stats, scale * g_cls, g, r.lane);
    } else {
        for (int j = r.lane; j < C; j += 32) store(g + j, 0.0f);
    }
    if (k.detection && r.lane == 0) {
        const float g_obj = upstream(up.obj, up.obj_stride, r.index) / divisor(k, state, false);
        objectness_row(load(z + C), load(z + C + 1), r.label == C, g + C, scale * g_obj);
    }
}

#define SEESAW_KERNELS(SUFFIX, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                    \
        seesaw_forward_##SUFFIX(SeesawParams k, const T* logits, const i64* labels, const float* weights,        \
                                const float* log_counts, i64* state, float* row_class, float* row_obj,           \
                                float* stats, float* partials, float* out_class, float* out_obj) {               \
        const LossOut out = {row_class, row_obj, stats, partials, out_class, out_obj};                           \
        const Upstream none = {(const float*)0, 0, (const float*)0, 0};                                          \
        seesaw_loss_block<T>(k, logits, (T*)0, labels, weights, log_counts, state, out, none);                   \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                    \
        seesaw_backward_##SUFFIX(SeesawParams k, const T* logits, T* grad, const i64* labels,                    \
                                 const float* weights, const float* log_counts, const i64* state,                \
                                 const float* stats, const float* up_cls, i64 up_cls_stride, const float* up_obj, \
                                 i64 up_obj_stride) {                                                            \
        const Upstream up = {up_cls, up_cls_stride, up_obj, up_obj_stride};                                     \
        seesaw_grad_block<T>(k, logits, grad, labels, weights, log_counts, state, stats, up);                    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * SEESAW_WARPS_PER_BLOCK)                                    \
        seesaw_forward_backward_##SUFFIX(SeesawParams k, const T* logits, T* grad, const i64* labels, const float* weights,  \
                              const float* log_counts, i64* state, float* row_class, float* row_obj,              \
                              float* partials, float* out_class, float* out_obj) {                               \
        const LossOut out = {row_class, row_obj, (float*)0, partials, out_class, out_obj};                       \
        const float one = 1.0f;                                                                                  \
        const Upstream up = {&one, 0, &one, 0};                                                                  \
        seesaw_loss_block<T>(k, logits, grad, labels, weights, log_counts, state, out, up);                      \
    }

SEESAW_KERNELS(f32, float)
SEESAW_KERNELS(f16, f16_t)
SEESAW_KERNELS(bf16, bf16_t)

// ---- taking a batch back out of the counts ------------------------------------
//
// counts[label] += step for every row (step -1 takes a batch back out after
// a call failed past seesaw_prepare), on the device; nothing when `state`
// says the batch was bad (seesaw_prepare then counted nothing). Lanes holding
// the same label are combined first (__match_any_sync), so a warp issues one
// atomic per distinct label. Out-of-range labels are skipped. The counts are
// int64 added as u64: two's complement makes a negative step a subtraction.

extern "C" __global__ void seesaw_count(const i64* __restrict__ labels, i64 n_rows, i64 n_counters, i64 step,
                                        u64* __restrict__ counts, const i64* __restrict__ state) {
    if (state && state[SEESAW_STATE_BAD]) return;  // uniform across the grid
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
