// Seesaw loss kernels: a prepare kernel, row kernels, a count kernel.
//
// The row math and its derivation live in src/math.rs and docs/kernels.md.
// Per class row (z the logits, y the label, n the cumulative counts):
//   lse   = logsumexp(z),  m = max(z)
//   thr   = lse + max(z_y - lse, log eps)
//   z'_j  = z_j + p min(0, log n_j - log n_y) + q max(0, z_j - thr)   (j != y)
//   lse'  = logsumexp(z'),  loss = lse' - z_y
//   g_j   = scale (exp(z'_j - lse') - [j == y])
//
// Two ways through a row:
//   held   the row is read from global memory once, into registers (up to
//          SEESAW_HELD_PER_THREAD logits per thread), and everything is done
//          there with one exponential per logit: e_j = exp(z_j - m) gives lse;
//          the adjusted terms are products
//            a_j = exp(z'_j - shift) = e_j * r_j * exp(m - shift),
//            r_j = min(1, (n_j / n_y)^p) = min(1, T_j / T_y),  T = exp(p log n)
//          with T from the class table (no exponential), except for the few
//          logits above thr, whose compensation is folded into one exp2 of
//          their own; the gradient is a_j / sum(a).
//   exact  the row is read once per pass (online logsumexp, then the adjusted
//          sum against a shift that bounds every z', then the gradient), the
//          mitigation and compensation folded into one exponent per logit.
//          It serves rows wider than the registers hold and the rare rows the
//          held way cannot do exactly: a maximum that is not finite, or an
//          adjusted sum below SEESAW_HELD_UNDERFLOW.
// The gradient pass alone (seesaw_backward, from the loss pass's lse and
// lse') reads each logit once in either case: one exp2 per logit.
//
// Layouts (the host picks one by shape, src/fused/cuda.rs):
//   warp   a warp per row, SEESAW_WARPS_PER_BLOCK rows per block: many rows;
//   block  the block's 256 threads per row: few rows, or rows too wide for a
//          warp's registers.
// Either way the grid holds the blocks the device keeps resident
// (SEESAW_BLOCKS_PER_SM per SM) and the blocks loop over the rows, so that
// each block stages the class table in shared memory once.
//
// Global memory is touched only through ld / st / atomics, 16 bytes at a time
// where a row's alignment allows (the unaligned head and tail of a row are
// read one element at a time). On the device they are plain accesses; the
// host emulator (kernels/emulator.cpp) counts the bytes each launch moves and
// faults misaligned accesses and races on shared memory through them.
//
// Every kernel takes the call's parameter block (kernels/seesaw_params.h) by
// value as its first argument.
//
// Compiled at run time by NVRTC, which has no default include path: no CUDA
// headers, so the f16 / bf16 conversions are written here; the parameter
// header is handed to NVRTC by name (src/fused/compile.rs).

#include "seesaw_params.h"

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short u16;

struct f16_t { u16 bits; };
struct bf16_t { u16 bits; };

// 16 bytes, the widest access: 4 f32 or 8 f16 / bf16.
struct alignas(16) Vec16 {
    unsigned w[4];
};

#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)
#define FULL_MASK 0xffffffffu
#define LOG2E 1.4426950408889634f
#define BLOCK_THREADS (32 * SEESAW_WARPS_PER_BLOCK)
// 0 compiles the held way's rare branches (compensated logits, a label whose
// n^p is past f32's range) to nothing but their test, so that
// scripts/sass-report.sh can count the main path's instructions per logit.
// Everything that runs takes 1.
#ifndef SEESAW_RARE_PATHS
#define SEESAW_RARE_PATHS 1
#endif

// ---- memory access, conversions, fast exp2 / log2 --------------------------------
//
// The host emulator defines SEESAW_HOST_EMULATION and brings its own ld / st /
// SEESAW_SHARED (counting and checking every access) and conversions (it has
// no PTX).
#ifndef SEESAW_HOST_EMULATION
template <typename T>
__device__ __forceinline__ T ld(const T* p) {
    return *p;
}
// A load that bypasses this SM's L1 (which atomics elsewhere do not update).
template <typename T>
__device__ __forceinline__ T ld_volatile(const T* p) {
    return *(const volatile T*)p;
}
template <typename T>
__device__ __forceinline__ void st(T* p, T v) {
    *p = v;
}
template <typename T>
__device__ __forceinline__ void st_volatile(T* p, T v) {
    *(volatile T*)p = v;
}
#define SEESAW_SHARED(type, name, n) __shared__ type name[n]

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
// One MUFU.EX2: 2^x within 2 ulp, 0 for -inf, NaN for NaN.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// One MUFU.LG2.
__device__ __forceinline__ float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ u16 bf16_bits(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays a quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest, ties to even
    return (u16)(u >> 16);
}

__device__ __forceinline__ float load(const float* p) { return ld(p); }
__device__ __forceinline__ float load(const bf16_t* p) { return __uint_as_float(((unsigned)ld(p).bits) << 16); }
__device__ __forceinline__ float load(const f16_t* p) { return f16_to_f32(ld(p).bits); }

__device__ __forceinline__ void store(float* p, float v) { st(p, v); }
__device__ __forceinline__ void store(bf16_t* p, float v) {
    bf16_t b = {bf16_bits(v)};
    st(p, b);
}
__device__ __forceinline__ void store(f16_t* p, float v) {
    f16_t h = {f32_to_f16(v)};
    st(p, h);
}

// Elements of a storage kind in 16 bytes.
template <typename T>
struct Lanes {
    enum { VEC = 16 / (int)sizeof(T) };
};

__device__ __forceinline__ void unpack(const Vec16& v, float* x, const float*) {
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = __uint_as_float(v.w[i]);
}
__device__ __forceinline__ void unpack(const Vec16& v, float* x, const bf16_t*) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = __uint_as_float(v.w[i] << 16);
        x[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void unpack(const Vec16& v, float* x, const f16_t*) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = f16_to_f32((u16)(v.w[i] & 0xffffu));
        x[2 * i + 1] = f16_to_f32((u16)(v.w[i] >> 16));
    }
}
__device__ __forceinline__ Vec16 pack(const float* x, const float*) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = __float_as_uint(x[i]);
    return v;
}
__device__ __forceinline__ Vec16 pack(const float* x, const bf16_t*) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = (unsigned)bf16_bits(x[2 * i]) | ((unsigned)bf16_bits(x[2 * i + 1]) << 16);
    return v;
}
__device__ __forceinline__ Vec16 pack(const float* x, const f16_t*) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = (unsigned)f32_to_f16(x[2 * i]) | ((unsigned)f32_to_f16(x[2 * i + 1]) << 16);
    return v;
}

// Not NaN and not infinite, by the bits: no dependence on compiler flags.
__device__ __forceinline__ bool finite_f32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// A value every lane of a warp needs (every lane calls this with the same
// address): lane 0 loads it and shuffles it to the others, so a row's scalars
// cost one load per warp, as the 16-byte row loads cost one per lane.
__device__ __forceinline__ float warp_ld(const float* p) {
    float v = 0.0f;
    if ((threadIdx.x & 31) == 0) v = ld(p);
    return __shfl_sync(FULL_MASK, v, 0);
}
__device__ __forceinline__ i64 warp_ld(const i64* p) {
    long long v = 0;
    if ((threadIdx.x & 31) == 0) v = ld(p);
    return __shfl_sync(FULL_MASK, v, 0);
}
// The same for one element of logits, as f32.
template <typename T>
__device__ __forceinline__ float warp_load(const T* p) {
    float v = 0.0f;
    if ((threadIdx.x & 31) == 0) v = load(p);
    return __shfl_sync(FULL_MASK, v, 0);
}

// ---- a row's elements: the unaligned head, 16-byte vectors, the tail ------------

struct Span {
    int head;  // elements before the first 16-byte boundary
    int vecs;  // whole vectors from there
    int tail;  // elements after the last vector
};

template <typename T>
__device__ __forceinline__ Span span_of(const T* row, int n) {
    const int misaligned = (int)((u64)row & 15);  // a multiple of sizeof(T)
    const int head = min_int(misaligned ? (16 - misaligned) / (int)sizeof(T) : 0, n);
    const int vecs = (n - head) / Lanes<T>::VEC;
    Span s = {head, vecs, n - head - vecs * Lanes<T>::VEC};
    return s;
}

// ---- groups: the threads that share a row -----------------------------------------
//
// THREADS = 32: a warp per row; BLOCK_THREADS: the block per row. Reductions
// combine in a fixed order, so a row's results do not depend on timing.

template <int THREADS>
__device__ __forceinline__ int rank_in_row() {
    return THREADS == 32 ? (int)(threadIdx.x & 31) : (int)threadIdx.x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// The warps' values combined in warp order, the same in every thread.
// `combine` is a sum or a max. Every thread of the block calls it.
template <class Combine>
__device__ __forceinline__ float across_warps(float v, Combine combine) {
    SEESAW_SHARED(float, per_warp, SEESAW_WARPS_PER_BLOCK);
    if ((threadIdx.x & 31) == 0) st(&per_warp[threadIdx.x >> 5], v);
    __syncthreads();
    float r = ld(&per_warp[0]);
    for (int w = 1; w < SEESAW_WARPS_PER_BLOCK; ++w) r = combine(r, ld(&per_warp[w]));
    __syncthreads();  // before the next reduction writes per_warp again
    return r;
}

template <int THREADS>
__device__ __forceinline__ float row_sum(float v) {
    v = warp_sum(v);
    if (THREADS == 32) return v;
    return across_warps(v, [](float a, float b) { return a + b; });
}

template <int THREADS>
__device__ __forceinline__ float row_max(float v) {
    v = warp_max(v);
    if (THREADS == 32) return v;
    return across_warps(v, [](float a, float b) { return fmaxf(a, b); });
}

// ---- online logsumexp (the exact way) ---------------------------------------------

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

// The row's (max, sum), the same in every thread of the row.
template <int THREADS>
__device__ __forceinline__ Lse row_lse(Lse a) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        Lse b = {__shfl_xor_sync(FULL_MASK, a.max, offset), __shfl_xor_sync(FULL_MASK, a.sum, offset)};
        a = lse_merge(a, b);
    }
    if (THREADS == 32) return a;
    SEESAW_SHARED(float, warp_max_of, SEESAW_WARPS_PER_BLOCK);
    SEESAW_SHARED(float, warp_sum_of, SEESAW_WARPS_PER_BLOCK);
    if ((threadIdx.x & 31) == 0) {
        st(&warp_max_of[threadIdx.x >> 5], a.max);
        st(&warp_sum_of[threadIdx.x >> 5], a.sum);
    }
    __syncthreads();
    Lse r = {ld(&warp_max_of[0]), ld(&warp_sum_of[0])};
    for (int w = 1; w < SEESAW_WARPS_PER_BLOCK; ++w) {
        Lse b = {ld(&warp_max_of[w]), ld(&warp_sum_of[w])};
        r = lse_merge(r, b);
    }
    __syncthreads();
    return r;
}

// ---- visiting a row with vector loads --------------------------------------------

// f(j, z_j) for the elements of `z` [n] this thread of the row owns, in a
// fixed order.
template <typename T, int THREADS, class F>
__device__ __forceinline__ void visit_row(const T* __restrict__ z, int n, F f) {
    const int rank = rank_in_row<THREADS>();
    const Span s = span_of(z, n);
    if (rank < s.head) f(rank, load(z + rank));
    const Vec16* v = (const Vec16*)(z + s.head);
    for (int i = rank; i < s.vecs; i += THREADS) {
        float x[Lanes<T>::VEC];
        unpack(ld(v + i), x, z);
#pragma unroll
        for (int e = 0; e < Lanes<T>::VEC; ++e) f(s.head + i * Lanes<T>::VEC + e, x[e]);
    }
    if (rank < s.tail) {
        const int j = n - s.tail + rank;
        f(j, load(z + j));
    }
}

// g_j = f(j, z_j) for every element of a row [n]: vector loads and stores
// when `z` and `g` are aligned alike, else one element at a time.
template <typename T, int THREADS, class F>
__device__ __forceinline__ void map_row(const T* __restrict__ z, T* __restrict__ g, int n, F f) {
    const int rank = rank_in_row<THREADS>();
    const Span s = span_of(z, n);
    if (((u64)z & 15) != ((u64)g & 15)) {
        for (int j = rank; j < n; j += THREADS) store(g + j, f(j, load(z + j)));
        return;
    }
    if (rank < s.head) store(g + rank, f(rank, load(z + rank)));
    const Vec16* v = (const Vec16*)(z + s.head);
    Vec16* out = (Vec16*)(g + s.head);
    for (int i = rank; i < s.vecs; i += THREADS) {
        float x[Lanes<T>::VEC];
        unpack(ld(v + i), x, z);
#pragma unroll
        for (int e = 0; e < Lanes<T>::VEC; ++e) x[e] = f(s.head + i * Lanes<T>::VEC + e, x[e]);
        st(out + i, pack(x, g));
    }
    if (rank < s.tail) {
        const int j = n - s.tail + rank;
        store(g + j, f(j, load(z + j)));
    }
}

// Zeros a row of the gradient [n].
template <typename T, int THREADS>
__device__ __forceinline__ void zero_row(T* __restrict__ g, int n) {
    const int rank = rank_in_row<THREADS>();
    const Span s = span_of(g, n);
    if (rank < s.head) store(g + rank, 0.0f);
    Vec16 zero = {{0u, 0u, 0u, 0u}};
    Vec16* out = (Vec16*)(g + s.head);
    for (int i = rank; i < s.vecs; i += THREADS) st(out + i, zero);
    if (rank < s.tail) store(g + n - s.tail + rank, 0.0f);
}

// ---- the class table and one row's constants ------------------------------------
//
// The class table [2, C] f32, written by seesaw_prepare (or the host for a
// call that counts nothing): log_n[j] = log(max(n_j, 1)) and
// pow_n[j] = exp(p log_n[j]) = n_j^p, +inf past f32's range. A row whose
// label's pow_n is +inf takes r_j = exp(p min(0, log_n[j] - log_n[y])), one
// more exponential per logit.

// thr = lse + max(z_y - lse, log eps), all three relative to one base.
__device__ __forceinline__ float threshold_of(const SeesawParams& k, float lse, float z_y) {
    return lse + fmaxf(z_y - lse, k.log_eps);
}

struct Adjustment {
    float p, q, log_n_y, threshold;  // threshold_of(lse, z_y)
};

__device__ __forceinline__ Adjustment make_adjustment(const SeesawParams& k, float lse, float z_y, float log_n_y) {
    Adjustment a = {k.p, k.q, log_n_y, threshold_of(k, lse, z_y)};
    return a;
}

// z'_j of a negative class: p min(0, log n_j - log n_y) + q max(0, z_j - threshold).
__device__ __forceinline__ float adjusted(const Adjustment& a, float z_j, float log_n_j) {
    float m = log_n_j - a.log_n_y;
    float c = z_j - a.threshold;
    return z_j + a.p * (m < 0.0f ? m : 0.0f) + a.q * (c > 0.0f ? c : 0.0f);
}

// What the gradient pass of a row needs from its loss pass, relative to a
// base (the row's maximum when finite, else 0), so that a row of large
// logits keeps the offsets' precision: z_j - lse' is (z_j - base) - lse_adjusted.
struct RowStats {
    float base;
    float lse;           // lse - base
    float lse_adjusted;  // lse' - base
};

// The label's own term is in lse', so the exact loss is >= 0: a rounding
// below it is 0 (a NaN stays NaN, as the comparison is false for it).
// Both arguments relative to the same base.
__device__ __forceinline__ float class_loss(float lse_adjusted, float z_y) {
    const float loss = lse_adjusted - z_y;
    return loss < 0.0f ? 0.0f : loss;
}

// ---- the exact way: one pass per quantity, any width -------------------------------

// The loss pass of a class row: returns the unweighted loss, fills `stats`.
template <typename T, int THREADS>
__device__ __forceinline__ float exact_forward(const SeesawParams& k, const T* __restrict__ z, int C, int label,
                                               const float* __restrict__ log_n, RowStats& stats) {
    Lse first = {NEG_INF, 0.0f};
    visit_row<T, THREADS>(z, C, [&](int, float x) { lse_push(first, x); });
    first = row_lse<THREADS>(first);
    const float base = finite_f32(first.max) ? first.max : 0.0f;
    // Relative to base from here on (x - base is exact near the maximum).
    const float lse = (first.max - base) + logf(first.sum);
    const float m = first.max == NEG_INF ? 0.0f : first.max - base;
    const float z_y = warp_load(z + label) - base;
    const Adjustment adj = make_adjustment(k, lse, z_y, warp_ld(log_n + label));

    const float shift = lse + k.q * fmaxf(m - adj.threshold, 0.0f);
    float part = 0.0f;
    visit_row<T, THREADS>(z, C, [&](int j, float x) {
        x -= base;
        part += expf((j == label ? x : adjusted(adj, x, ld(log_n + j))) - shift);
    });
    const float sum = row_sum<THREADS>(part);
    float lse_adjusted = shift + logf(sum);
    if (sum < SEESAW_UNDERFLOW) {  // uniform across the row: every thread holds the same sum
        Lse second = {NEG_INF, 0.0f};
        visit_row<T, THREADS>(z, C, [&](int j, float x) {
            x -= base;
            lse_push(second, j == label ? x : adjusted(adj, x, ld(log_n + j)));
        });
        second = row_lse<THREADS>(second);
        if (second.max != NEG_INF) lse_adjusted = second.max + logf(second.sum);
    }
    stats.base = base;
    stats.lse = lse;
    stats.lse_adjusted = lse_adjusted;
    return class_loss(lse_adjusted, z_y);
}

// The gradient pass of a class row from its stats: one read of each logit
// and one exp2 per logit, the mitigation (from `log_n`, in shared memory or
// global) and compensation folded into its exponent:
//   g_j = scale * (2^((z_j - lse') log2 e + min(0, p log2 e (log n_j - log n_y))
//                     + q log2 e max(0, z_j - thr)) - [j == y]).
template <typename T, int THREADS>
__device__ __forceinline__ void class_grad(const SeesawParams& k, const T* __restrict__ z, int C, int label,
                                           const float* __restrict__ log_n, RowStats stats, float scale,
                                           T* __restrict__ g) {
    const float base = stats.base;
    const float z_y = warp_load(z + label) - base;
    const float log_n_y = warp_ld(log_n + label);
    const float threshold = threshold_of(k, stats.lse, z_y);
    const float p2 = k.p * LOG2E, q2 = k.q * LOG2E;
    const float lse_adjusted = stats.lse_adjusted;
    map_row<T, THREADS>(z, g, C, [&](int j, float x) {
        x -= base;
        const float mitigation = fminf(0.0f, p2 * (ld(log_n + j) - log_n_y));
        const float compensation = q2 * fmaxf(0.0f, x - threshold);
        const float v = scale * fast_exp2((x - lse_adjusted) * LOG2E + mitigation + compensation);
        return j == label ? v - scale : v;
    });
}

// ---- the held way: the row in registers ---------------------------------------------
//
// Thread `rank` of the row holds vectors rank + THREADS i (i < ITEMS) of the
// row's span, plus one head and one tail element when rank is below their
// counts.

template <typename T, int ITEMS>
struct Held {
    float x[ITEMS][Lanes<T>::VEC];
    float head, tail;
};

// f(j, x) over the held elements, in a fixed order.
template <typename T, int THREADS, int ITEMS, class F>
__device__ __forceinline__ void each_held(Held<T, ITEMS>& h, const Span& s, int n, F f) {
    const int rank = rank_in_row<THREADS>();
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int v = rank + THREADS * i;
        if (v < s.vecs) {
#pragma unroll
            for (int e = 0; e < Lanes<T>::VEC; ++e) f(s.head + v * Lanes<T>::VEC + e, h.x[i][e]);
        }
    }
    if (rank < s.head) f(rank, h.head);
    if (rank < s.tail) f(n - s.tail + rank, h.tail);
}

// The loss pass of a class row held in registers, and with `g` its gradient
// pass (scaled by `scale`). Returns false, having written nothing, for a
// row the exact way must do (uniform across the row).
template <typename T, int THREADS, int ITEMS>
__device__ __forceinline__ bool held_row(const SeesawParams& k, const T* __restrict__ z, int C, int label,
                                         const float* __restrict__ log_n, const float* pow_n, T* __restrict__ g,
                                         float scale, float& loss, RowStats& stats) {
    const int rank = rank_in_row<THREADS>();
    const Span s = span_of(z, C);
    if (s.vecs > THREADS * ITEMS) return false;

    Held<T, ITEMS> h;
    const Vec16* v = (const Vec16*)(z + s.head);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int at = rank + THREADS * i;
        if (at < s.vecs) unpack(ld(v + at), h.x[i], z);
    }
    if (rank < s.head) h.head = load(z + rank);
    if (rank < s.tail) h.tail = load(z + C - s.tail + rank);

    float m = NEG_INF;
    each_held<T, THREADS>(h, s, C, [&](int, float& x) { m = fmaxf(m, x); });
    m = row_max<THREADS>(m);
    if (!finite_f32(m)) return false;  // an infinite maximum, or only NaN

    // e_j = exp(z_j - m), in place; a NaN stays NaN and makes every sum NaN.
    float part = 0.0f;
    each_held<T, THREADS>(h, s, C, [&](int, float& x) {
        x = fast_exp2((x - m) * LOG2E);
        part += x;
    });
    // Relative to m from here on: lse, z_y, threshold and shift are offsets
    // from the maximum, exact near it however large the logits.
    const float lse = logf(row_sum<THREADS>(part));
    const float z_y = warp_load(z + label) - m;
    const float log_n_y = warp_ld(log_n + label);
    const float threshold = threshold_of(k, lse, z_y);
    const float shift = lse + k.q * fmaxf(-threshold, 0.0f);
    const float to_shift = expf(-shift);
    // z_j > threshold exactly when e_j > e_threshold: both by the same formula.
    const float e_threshold = fast_exp2(threshold * LOG2E);
    const float pow_n_y = ld(pow_n + label);
    const bool by_table = finite_f32(pow_n_y);
    const float inv_pow_n_y = 1.0f / pow_n_y;
    const float p2 = k.p * LOG2E;
    const float compensated_bias = -(k.q * threshold + shift) * LOG2E;

    // a_j = exp(z'_j - shift), in place.
    part = 0.0f;
    each_held<T, THREADS>(h, s, C, [&](int j, float& x) {
        float a;
        if (x > e_threshold) {  // compensated: z_j above the threshold, a few per row
            const float mitigation = fminf(0.0f, p2 * (ld(log_n + j) - log_n_y));
            a = SEESAW_RARE_PATHS ? fast_exp2(fast_log2(x) * (1.0f + k.q) + compensated_bias + mitigation) : 0.0f;
        } else {
            const float r = by_table || !SEESAW_RARE_PATHS ? fminf(1.0f, ld(pow_n + j) * inv_pow_n_y)
                                                          : fast_exp2(fminf(0.0f, p2 * (ld(log_n + j) - log_n_y)));
            a = x * r * to_shift;
        }
        x = a;
        part += a;
    });
    const float sum = row_sum<THREADS>(part);
    if (!(sum >= SEESAW_HELD_UNDERFLOW)) return false;  // underflowed, or NaN

    stats.base = m;
    stats.lse = lse;
    stats.lse_adjusted = shift + logf(sum);
    loss = class_loss(stats.lse_adjusted, z_y);
    if (!g) return true;

    // g_j = scale (a_j / sum - [j == y]).
    const float f = scale / sum;
    if (((u64)z & 15) == ((u64)g & 15)) {
        Vec16* out = (Vec16*)(g + s.head);
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int at = rank + THREADS * i;
            if (at < s.vecs) {
                float y[Lanes<T>::VEC];
                const int first = s.head + at * Lanes<T>::VEC;
#pragma unroll
                for (int e = 0; e < Lanes<T>::VEC; ++e) y[e] = h.x[i][e] * f;
                if ((unsigned)(label - first) < (unsigned)Lanes<T>::VEC) {
#pragma unroll
                    for (int e = 0; e < Lanes<T>::VEC; ++e)
                        if (first + e == label) y[e] -= scale;
                }
                st(out + at, pack(y, g));
            }
        }
        if (rank < s.head) store(g + rank, h.head * f - (rank == label ? scale : 0.0f));
        if (rank < s.tail) {
            const int j = C - s.tail + rank;
            store(g + j, h.tail * f - (j == label ? scale : 0.0f));
        }
    } else {
        each_held<T, THREADS>(h, s, C, [&](int j, float& a) { store(g + j, a * f - (j == label ? scale : 0.0f)); });
    }
    return true;
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
// loss pass, keeping RowStats per row for the autograd node's backward)
// and seesaw_backward (the gradient pass times the upstream gradient), or
// seesaw_forward_backward (both in one read of the row). Everything O(N + C)
// of the call is in them: no other launch and no host read is needed.
//
// k          the call's parameters: k.rows rows, k.classes = C, k.detection,
//            k.row_stride (elements between rows of logits), the Seesaw
//            constants, k.loss_weight and the reduction
// logits     [N, width] with row stride k.row_stride, unit column stride
// grad       [N, width] contiguous, written whole
// labels     [N] int64
// weights    [N] f32 or null
// counts     [n_counters] int64, the loss's cumulative counts
// histogram  [n_counters] int64 zeros, or null: where seesaw_prepare counts a
//            good batch (the step's histogram, summed over ranks before it
//            reaches the counts) instead of `counts`
// table      [2, C] f32, the class table (above), written by seesaw_prepare
// state      [SEESAW_STATE_LEN] int64, written by seesaw_prepare
// error      [SEESAW_ERROR_LEN] int64, the loss's error record
// row_class  [N] f32: loss_weight * weight * class loss per row (0 for
//            background rows), the output of Reduction::None
// row_obj    [N] f32: the same for objectness (detection) or null
// stats      [N, SEESAW_ROW_STATS] f32: RowStats of each class row
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
// Reductions are deterministic: every warp sums its rows in row order, every
// block its warps in a fixed order into `partials`, and the last block to
// finish (a ticket in `state`) sums the partials in a fixed order. No float
// atomics.

#define REDUCTION_NONE 0
#define REDUCTION_MEAN 2

__device__ __forceinline__ bool label_ok(const SeesawParams& k, i64 label) {
    return label >= 0 && label <= (k.detection ? (i64)k.classes : (i64)k.classes - 1);
}

// What a mean of one part divides by: avg_factor + f32 epsilon when given,
// else the part's rows (the positive rows for a detection head's classes).
// Every lane of the warp calls it.
__device__ __forceinline__ float divisor(const SeesawParams& k, const i64* __restrict__ state, bool classes) {
    if (k.reduction != REDUCTION_MEAN) return 1.0f;
    if (k.has_avg_factor) return (float)(k.avg_factor + 1.1920928955078125e-07);
    const i64 rows = classes && k.detection ? warp_ld(state + SEESAW_STATE_POSITIVE) : k.rows;
    return (float)(rows > 1 ? rows : 1);
}

// ---- seesaw_prepare: checks, counts, the class table, positive rows (one block) ----

extern "C" __global__ void __launch_bounds__(SEESAW_PREPARE_THREADS)
    seesaw_prepare(SeesawParams k, const i64* __restrict__ labels, const float* __restrict__ weights,
                   u64* __restrict__ counts, i64 n_counters, u64* __restrict__ histogram, float* __restrict__ table,
                   i64* __restrict__ state, i64* __restrict__ error) {
    const i64 NONE = 0x7fffffffffffffffll;
    SEESAW_SHARED(long long, first_bad_row, 1);
    SEESAW_SHARED(long long, first_bad_counter, 1);
    SEESAW_SHARED(unsigned long long, positives, 1);
    const int t = threadIdx.x;
    // Counts are read with volatile loads: the atomics below update them in
    // L2, and a plain load could hit this SM's stale L1 copy.
    const i64* count_values = (const i64*)counts;
    if (t == 0) {
        st(&first_bad_row[0], NONE);
        st(&first_bad_counter[0], NONE);
        st(&positives[0], 0ull);
    }
    __syncthreads();
    unsigned long long mine = 0;
    for (i64 i = t; i < k.rows; i += blockDim.x) {
        const i64 label = ld(labels + i);
        if (!label_ok(k, label) || (weights && !finite_f32(ld(weights + i)))) atomicMin(&first_bad_row[0], i);
        mine += label >= 0 && label < k.classes;
    }
    // A count is bad when negative, or close enough to int64's limit that
    // this batch could overflow it.
    const i64 limit = NONE - k.rows;
    for (i64 j = t; j < n_counters; j += blockDim.x) {
        const long long v = ld_volatile(count_values + j);
        if (v < 0 || v > limit) atomicMin(&first_bad_counter[0], j);
    }
    if (mine) atomicAdd(&positives[0], mine);
    __syncthreads();
    // The same in every thread.
    const bool bad = ld(&first_bad_row[0]) != NONE || ld(&first_bad_counter[0]) != NONE;
    if (!bad) {
        // Every lane of a warp runs the same number of iterations (rounded
        // up), so the warp-wide match sees all 32 lanes; lanes holding the
        // same label are combined, one atomic per distinct label.
        const i64 rounded = (k.rows + 31) / 32 * 32;
        for (i64 i = t; i < rounded; i += blockDim.x) {
            const i64 label = i < k.rows ? ld(labels + i) : -1;
            const unsigned same = __match_any_sync(FULL_MASK, label);
            if (label >= 0 && (t & 31) == __ffs(same) - 1)
                atomicAdd((histogram ? histogram : counts) + label, (u64)__popc(same));
        }
    }
    __syncthreads();
    for (i64 j = t; j < k.classes; j += blockDim.x) {
        const long long n = ld_volatile(count_values + j);
        const float log_n = logf(n > 1 ? (float)n : 1.0f);
        st(table + j, log_n);
        st(table + k.classes + j, expf(k.p * log_n));
    }
    if (t == 0) {
        st(state + SEESAW_STATE_BAD, (i64)bad);
        st(state + SEESAW_STATE_POSITIVE, (i64)ld(&positives[0]));
        st(state + SEESAW_STATE_TICKET, (i64)0);
        if (bad && ld_volatile(error + SEESAW_ERROR_SET) == 0) {
            const i64 bad_row = ld(&first_bad_row[0]);
            if (bad_row != NONE) {
                const i64 label = ld(labels + bad_row);
                const bool label_bad = !label_ok(k, label);
                st_volatile(error + SEESAW_ERROR_KIND, (i64)(label_bad ? SEESAW_ERROR_LABEL : SEESAW_ERROR_WEIGHT));
                st_volatile(error + SEESAW_ERROR_ROW, bad_row);
                st_volatile(error + SEESAW_ERROR_VALUE,
                            label_bad ? label : (i64)__float_as_uint(ld(weights + bad_row)));
            } else {
                const i64 counter = ld(&first_bad_counter[0]);
                st_volatile(error + SEESAW_ERROR_KIND, (i64)SEESAW_ERROR_COUNT);
                st_volatile(error + SEESAW_ERROR_ROW, counter);
                st_volatile(error + SEESAW_ERROR_VALUE, (i64)ld_volatile(count_values + counter));
            }
            // The record's fields reach the host before its flag does.
            __threadfence_system();
            st_volatile(error + SEESAW_ERROR_SET, (i64)1);
        }
    }
}

// ---- the row kernels -------------------------------------------------------------

// Rows of a block per turn of its loop over the rows.
template <int THREADS>
__device__ __forceinline__ int rows_per_turn() {
    return THREADS == 32 ? SEESAW_WARPS_PER_BLOCK : 1;
}

// Logits per row that the class table in shared memory has room for: the
// widest row the held way takes.
template <typename T, int THREADS>
__device__ __forceinline__ int table_room() {
    return THREADS * SEESAW_HELD_PER_THREAD;
}

struct Row {
    i64 index;
    bool present;  // index < rows: the row's threads have a row (uniform across them)
    bool valid;    // present, the batch is good and the label in range
    int label;
};

__device__ __forceinline__ Row row_at(const SeesawParams& k, i64 index, const i64* __restrict__ labels, bool bad) {
    Row r;
    r.index = index;
    r.present = index < k.rows;
    r.valid = false;
    r.label = 0;
    if (r.present) {
        const i64 label = warp_ld(labels + index);
        r.valid = !bad && label_ok(k, label);
        r.label = r.valid ? (int)label : 0;
    }
    return r;
}

__device__ __forceinline__ int width_of(const SeesawParams& k) { return k.detection ? k.classes + 2 : k.classes; }

// The upstream multipliers of a gradient pass: up[row * stride], or 1 for
// every row (`unit`, forward_backward), or 0 (null: that output is unused).
struct Upstream {
    const float* cls;
    i64 cls_stride;
    const float* obj;
    i64 obj_stride;
    bool unit;
};

// Every lane of the warp calls it.
__device__ __forceinline__ float upstream(const Upstream& u, const float* __restrict__ up, i64 stride, i64 row) {
    return u.unit ? 1.0f : up ? warp_ld(up + row * stride) : 0.0f;
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

// Copies one half of the class table to shared memory when the rows fit the
// held way (uniform across the block); returns whether it did. The rows then
// read the shared copy through a pointer the compiler knows to be shared
// (LDS, not a generic load).
template <typename T, int THREADS>
__device__ __forceinline__ bool stage_table(const SeesawParams& k, const float* __restrict__ half, float* shared) {
    if (k.classes > table_room<T, THREADS>()) return false;
    for (int j = threadIdx.x; j < k.classes; j += blockDim.x) st(shared + j, ld(half + j));
    __syncthreads();
    return true;
}

// The loss pass of one class row (and, with `g`, its gradient pass times
// `scale_grad`): the held way when the row fits (`held`: the class table's
// powers are in `pow_n`), else the exact way.
template <typename T, int THREADS, int ITEMS>
__device__ __forceinline__ float class_row(const SeesawParams& k, const T* __restrict__ z, int label,
                                           const float* __restrict__ log_n, bool held, const float* pow_n,
                                           T* __restrict__ g, float scale_grad, RowStats& stats) {
    const int C = k.classes;
    float loss;
    if (held && held_row<T, THREADS, ITEMS>(k, z, C, label, log_n, pow_n, g, scale_grad, loss, stats)) return loss;
    loss = exact_forward<T, THREADS>(k, z, C, label, log_n, stats);
    if (g) class_grad<T, THREADS>(k, z, C, label, log_n, stats, scale_grad, g);
    return loss;
}

// Block sums of the rows' values in a fixed order, and in the last block to
// finish, the sums of all blocks in a fixed order divided by the means'
// divisors. Every thread of the block calls it, with its warp's values in
// lane 0.
__device__ __forceinline__ void reduce_rows(i64* ticket, const LossOut& out, float div_class, float div_obj,
                                            float v_class, float v_obj) {
    SEESAW_SHARED(float, warp_class, SEESAW_WARPS_PER_BLOCK);
    SEESAW_SHARED(float, warp_obj, SEESAW_WARPS_PER_BLOCK);
    SEESAW_SHARED(int, last, 1);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        st(&warp_class[warp], v_class);
        st(&warp_obj[warp], v_obj);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float c = 0.0f, o = 0.0f;
        for (int w = 0; w < SEESAW_WARPS_PER_BLOCK; ++w) {
            c += ld(&warp_class[w]);
            o += ld(&warp_obj[w]);
        }
        st(out.partials + 2 * blockIdx.x, c);
        st(out.partials + 2 * blockIdx.x + 1, o);
        __threadfence();  // the partials are visible before the ticket is taken
        st(&last[0], (int)(atomicAdd((u64*)ticket, 1ull) == gridDim.x - 1));
    }
    __syncthreads();
    if (ld(&last[0]) && warp == 0) {
        float c = 0.0f, o = 0.0f;
        for (unsigned b = lane; b < gridDim.x; b += 32) {
            c += ld_volatile(out.partials + 2 * b);
            o += ld_volatile(out.partials + 2 * b + 1);
        }
        c = warp_sum(c);
        o = warp_sum(o);
        if (lane == 0) {
            st(out.out_class, c / div_class);
            if (out.out_obj) st(out.out_obj, o / div_obj);
        }
    }
}

// The loss pass over the block's rows (and, with `grad`, the gradient pass,
// with the upstream gradient `up` of the outputs), then the reduction.
template <typename T, int THREADS, int ITEMS>
__device__ __forceinline__ void seesaw_loss_block(const SeesawParams& k, const T* __restrict__ logits,
                                                  T* __restrict__ grad, const i64* __restrict__ labels,
                                                  const float* __restrict__ weights,
                                                  const float* __restrict__ table, i64* __restrict__ state,
                                                  const LossOut& out, Upstream up) {
    SEESAW_SHARED(float, pow_n_shared, THREADS * SEESAW_HELD_PER_THREAD);
    const int C = k.classes;
    const bool held = stage_table<T, THREADS>(k, table + C, pow_n_shared);  // else the exact way for every row
    const bool bad = warp_ld(state + SEESAW_STATE_BAD) != 0;
    const float div_class = divisor(k, state, true), div_obj = divisor(k, state, false);
    const int rank = rank_in_row<THREADS>();
    const int slot = THREADS == 32 ? (int)(threadIdx.x >> 5) : 0;
    float sum_class = 0.0f, sum_obj = 0.0f;  // this row slot's rows, in order
    for (i64 first = (i64)blockIdx.x * rows_per_turn<THREADS>(); first < k.rows;
         first += (i64)gridDim.x * rows_per_turn<THREADS>()) {
        const Row r = row_at(k, first + slot, labels, bad);
        if (!r.present) continue;  // uniform across the row's threads; none in the block layout
        const T* z = logits + r.index * k.row_stride;
        T* g = grad ? grad + r.index * (i64)width_of(k) : (T*)0;
        float v_class = 0.0f, v_obj = 0.0f;
        RowStats stats = {QNAN, QNAN, QNAN};
        if (r.valid) {
            const float scale = k.loss_weight * (weights ? warp_ld(weights + r.index) : 1.0f);
            const float g_cls = upstream(up, up.cls, up.cls_stride, r.index) / div_class;
            const float g_obj = upstream(up, up.obj, up.obj_stride, r.index) / div_obj;
            if (r.label < C) {
                v_class = scale * class_row<T, THREADS, ITEMS>(k, z, r.label, table, held, pow_n_shared, g,
                                                               scale * g_cls, stats);
            } else if (g) {
                zero_row<T, THREADS>(g, C);
            }
            if (k.detection && rank == 0)
                v_obj = scale * objectness_row(load(z + C), load(z + C + 1), r.label == C, g ? g + C : (T*)0,
                                               scale * g_obj);
        } else {
            v_class = v_obj = QNAN;
            if (g) zero_row<T, THREADS>(g, width_of(k));
        }
        if (rank == 0) {
            if (out.stats) {
                float* row_stats = out.stats + SEESAW_ROW_STATS * r.index;
                st(row_stats, stats.base);
                st(row_stats + 1, stats.lse);
                st(row_stats + 2, stats.lse_adjusted);
            }
            if (out.row_class) st(out.row_class + r.index, v_class);
            if (k.detection && out.row_obj) st(out.row_obj + r.index, v_obj);
            sum_class += v_class;
            sum_obj += v_obj;
        }
    }
    if (out.out_class)  // grid-uniform
        reduce_rows(state + SEESAW_STATE_TICKET, out, div_class, div_obj, rank == 0 ? sum_class : 0.0f,
                    rank == 0 ? sum_obj : 0.0f);
}

// The gradient pass alone, from the loss pass's stats.
template <typename T, int THREADS>
__device__ __forceinline__ void seesaw_grad_block(const SeesawParams& k, const T* __restrict__ logits,
                                                  T* __restrict__ grad, const i64* __restrict__ labels,
                                                  const float* __restrict__ weights,
                                                  const float* __restrict__ table,
                                                  const i64* __restrict__ state, const float* __restrict__ stats_in,
                                                  Upstream up) {
    SEESAW_SHARED(float, log_n_shared, THREADS * SEESAW_HELD_PER_THREAD);
    const int C = k.classes;
    const bool staged = stage_table<T, THREADS>(k, table, log_n_shared);
    const bool bad = warp_ld(state + SEESAW_STATE_BAD) != 0;
    const float div_class = divisor(k, state, true), div_obj = divisor(k, state, false);
    const int rank = rank_in_row<THREADS>();
    const int slot = THREADS == 32 ? (int)(threadIdx.x >> 5) : 0;
    for (i64 first = (i64)blockIdx.x * rows_per_turn<THREADS>(); first < k.rows;
         first += (i64)gridDim.x * rows_per_turn<THREADS>()) {
        const Row r = row_at(k, first + slot, labels, bad);
        if (!r.present) continue;
        const T* z = logits + r.index * k.row_stride;
        T* g = grad + r.index * (i64)width_of(k);
        if (!r.valid) {
            zero_row<T, THREADS>(g, width_of(k));
            continue;
        }
        const float scale = k.loss_weight * (weights ? warp_ld(weights + r.index) : 1.0f);
        const float g_cls = upstream(up, up.cls, up.cls_stride, r.index) / div_class;
        const float g_obj = upstream(up, up.obj, up.obj_stride, r.index) / div_obj;
        if (r.label < C) {
            const float* row_stats = stats_in + SEESAW_ROW_STATS * r.index;
            RowStats stats = {warp_ld(row_stats), warp_ld(row_stats + 1), warp_ld(row_stats + 2)};
            if (staged)
                class_grad<T, THREADS>(k, z, C, r.label, log_n_shared, stats, scale * g_cls, g);
            else
                class_grad<T, THREADS>(k, z, C, r.label, table, stats, scale * g_cls, g);
        } else {
            zero_row<T, THREADS>(g, C);
        }
        if (k.detection && rank == 0) {
            objectness_row(load(z + C), load(z + C + 1), r.label == C, g + C, scale * g_obj);
        }
    }
}

// The row kernels of one storage kind and layout. THREADS: 32 (warp) or
// BLOCK_THREADS (block); ITEMS: 16-byte vectors held per thread.
#define SEESAW_KERNELS(SUFFIX, LAYOUT, T, THREADS)                                                              \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, SEESAW_BLOCKS_PER_SM)                            \
        seesaw_forward_##SUFFIX##_##LAYOUT(SeesawParams k, const T* logits, const i64* labels,                  \
                                           const float* weights, const float* table, i64* state,                \
                                           float* row_class, float* row_obj, float* stats, float* partials,     \
                                           float* out_class, float* out_obj) {                                   \
        const LossOut out = {row_class, row_obj, stats, partials, out_class, out_obj};                           \
        const Upstream none = {(const float*)0, 0, (const float*)0, 0, false};                                   \
        seesaw_loss_block<T, THREADS, SEESAW_HELD_PER_THREAD / Lanes<T>::VEC>(k, logits, (T*)0, labels, weights, \
                                                                              table, state, out, none);          \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, SEESAW_BLOCKS_PER_SM)                            \
        seesaw_backward_##SUFFIX##_##LAYOUT(SeesawParams k, const T* logits, T* grad, const i64* labels,        \
                                            const float* weights, const float* table, const i64* state,         \
                                            const float* stats, const float* up_cls, i64 up_cls_stride,         \
                                            const float* up_obj, i64 up_obj_stride) {                           \
        const Upstream up = {up_cls, up_cls_stride, up_obj, up_obj_stride, false};                               \
        seesaw_grad_block<T, THREADS>(k, logits, grad, labels, weights, table, state, stats, up);                \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, SEESAW_BLOCKS_PER_SM)                            \
        seesaw_forward_backward_##SUFFIX##_##LAYOUT(SeesawParams k, const T* logits, T* grad,                   \
                                                    const i64* labels, const float* weights,                    \
                                                    const float* table, i64* state, float* row_class,           \
                                                    float* row_obj, float* partials, float* out_class,          \
                                                    float* out_obj) {                                            \
        const LossOut out = {row_class, row_obj, (float*)0, partials, out_class, out_obj};                       \
        const Upstream unit = {(const float*)0, 0, (const float*)0, 0, true};                                    \
        seesaw_loss_block<T, THREADS, SEESAW_HELD_PER_THREAD / Lanes<T>::VEC>(k, logits, grad, labels, weights,  \
                                                                              table, state, out, unit);          \
    }

SEESAW_KERNELS(f32, warp, float, 32)
SEESAW_KERNELS(f16, warp, f16_t, 32)
SEESAW_KERNELS(bf16, warp, bf16_t, 32)
SEESAW_KERNELS(f32, block, float, BLOCK_THREADS)
SEESAW_KERNELS(f16, block, f16_t, BLOCK_THREADS)
SEESAW_KERNELS(bf16, block, bf16_t, BLOCK_THREADS)

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
    if (state && ld(state + SEESAW_STATE_BAD)) return;  // uniform across the grid
    const i64 stride = (i64)gridDim.x * blockDim.x;
    // Every lane of a warp runs the same number of iterations (rounded up),
    // so the warp-wide match below sees all 32 lanes.
    const i64 rounded = (n_rows + 31) / 32 * 32;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < rounded; i += stride) {
        const i64 label = i < n_rows ? ld(labels + i) : -1;
        const bool valid = label >= 0 && label < n_counters;
        const unsigned same = __match_any_sync(FULL_MASK, valid ? label : -1);
        const int leader = __ffs(same) - 1;
        if (valid && (threadIdx.x & 31) == leader) atomicAdd(counts + label, (u64)(step * (i64)__popc(same)));
    }
}
