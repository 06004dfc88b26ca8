// Runs the kernels of kernels/seesaw.cu on the host, so that tests on a
// machine without a GPU exercise the kernel source itself and the host code
// that launches it (cargo feature `testing`, src/fused/emulation.rs).
//
// A block is one fiber (ucontext) per thread on one OS thread. A warp
// intrinsic (__shfl_xor_sync, __match_any_sync) is a point where every lane
// of the warp yields: once all 32 have arrived, each reads what the others
// left, as the lanes of a warp meet on the device; __syncthreads is the same
// for every thread of the block. __shared__ variables are per OS thread, so
// per block. Blocks run on several OS threads, so atomics race as they do on
// a GPU.
//
// Every access of the kernels to memory goes through ld / st / the atomics
// (kernels/seesaw.cu), which here count the bytes each launch reads and
// writes in each buffer argument, and check it.
//
// Checks (each fails the launch with a message, as a fault would, or reports
// what the device would leave undefined):
//   - the launch's arguments match the kernel's parameters in number and size
//     (on a GPU a mismatch is silently misread arguments);
//   - every access is aligned to its size, 16-byte vector accesses included
//     (a misaligned access faults on the device);
//   - every global access lies inside a buffer argument (else it would read
//     or corrupt someone else's memory, or fault); each buffer argument is
//     also copied to the end of a mapping followed by an inaccessible page,
//     at the original's alignment modulo 16, as a second line;
//   - every lane of a warp reaches the same intrinsic with the full mask, or
//     none does (diverged warp intrinsics are undefined on the device);
//   - every thread of a block reaches each __syncthreads (one that some
//     threads skip or leave the kernel before is undefined on the device);
//   - shared memory (SEESAW_SHARED) is read only after a thread of the block
//     wrote it, and no thread reads a word that another wrote, or writes a
//     word that another read or wrote, since the last __syncthreads (a race
//     on the device), atomics on the same word excepted.
// What it does not model: the device's expf / logf / exp2 (host libm; all
// within a few ulp), memory ordering between warps, caches (every access
// counts, so a logit read twice counts twice).

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <math.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace emu {

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

constexpr int WARP = 32;
constexpr int MAX_BLOCK = 1024;
constexpr size_t STACK_BYTES = 128 * 1024;

// What a lane waits at: a warp intrinsic (with its lane mask and xor offset)
// or the block barrier.
enum class Op : int { None, Shuffle, Broadcast, Match, Barrier };

struct Meeting {
    Op op;
    unsigned mask;
    int arg;
};

struct Body {
    void (*invoke)(void* fn, void* const* values);
    void* fn;
    void* const* values;
};

// Exchange slots of one warp (two rows: a lane that resumes from meeting r
// and reaches meeting r+1 writes the other row, so its neighbours can still
// read row r).
struct WarpSlots {
    uint64_t slots[2][WARP];
    unsigned round = 0;
};

// One block's fibers: every thread of the block is a lane on this OS thread.
struct Block {
    ucontext_t scheduler;
    ucontext_t lanes[MAX_BLOCK];
    // One stack per thread of the launch's blocks, left uninitialized:
    // zeroing them per worker and launch is most of a small launch's time.
    std::unique_ptr<char[]> stacks;
    bool exited[MAX_BLOCK];
    Meeting at[MAX_BLOCK];
    WarpSlots warps[MAX_BLOCK / WARP];
    unsigned barriers = 0;
    unsigned threads = 0;
    dim3 block_idx, block_dim, grid_dim;
    dim3 thread_idx[MAX_BLOCK];
    Body body;
    // The first fault a lane reported in this block ("" if none).
    std::string fault;
};

thread_local Block* current = nullptr;
thread_local int current_lane = 0;

// Shared-memory epochs of this OS thread: one per stretch between barriers,
// a new one at each block's start (so what a block wrote before is unwritten
// for the next).
thread_local uint64_t epoch = 1;
thread_local uint64_t block_epoch = 1;

// Records the first fault of the running block; the launch fails with it.
void fault(const std::string& what) {
    Block& b = *current;
    if (b.fault.empty())
        b.fault = "thread " + std::to_string(current_lane) + " of block " + std::to_string(b.block_idx.x) + " " + what;
}

void lane_main() {
    Block* b = current;
    b->body.invoke(b->body.fn, b->body.values);
    b->exited[current_lane] = true;
    // uc_link returns to the scheduler.
}

// Every lane of the warp writes `value`, yields, and once all have met
// reads the warp's row.
const uint64_t* meet(Op op, unsigned mask, int arg, uint64_t value) {
    Block& b = *current;
    const int lane = current_lane;
    WarpSlots& w = b.warps[lane / WARP];
    const unsigned r = w.round;
    w.slots[r & 1][lane % WARP] = value;
    b.at[lane] = {op, mask, arg};
    swapcontext(&b.lanes[lane], &b.scheduler);
    return w.slots[r & 1];
}

// The block barrier: the lane yields until every thread of the block is there.
void barrier() {
    Block& b = *current;
    const int lane = current_lane;
    b.at[lane] = {Op::Barrier, 0, 0};
    swapcontext(&b.lanes[lane], &b.scheduler);
}

void resume(Block& b, int lane) {
    current_lane = lane;
    b.at[lane] = {Op::None, 0, 0};
    swapcontext(&b.scheduler, &b.lanes[lane]);
}

// Runs one block to the end, its warps resumed in `warp_order`; returns an
// error message or "".
std::string run_block(Block& b, unsigned block, const std::vector<unsigned>& warp_order) {
    current = &b;
    b.block_idx.x = block;
    b.barriers = 0;
    b.fault.clear();
    block_epoch = ++epoch;
    const unsigned n_warps = b.threads / WARP;
    for (unsigned lane = 0; lane < b.threads; ++lane) {
        b.exited[lane] = false;
        b.at[lane] = {Op::None, 0, 0};
        b.thread_idx[lane].x = lane;
        getcontext(&b.lanes[lane]);
        b.lanes[lane].uc_stack.ss_sp = b.stacks.get() + lane * STACK_BYTES;
        b.lanes[lane].uc_stack.ss_size = STACK_BYTES;
        b.lanes[lane].uc_link = &b.scheduler;
        makecontext(&b.lanes[lane], lane_main, 0);
    }
    for (unsigned w = 0; w < n_warps; ++w) b.warps[w].round = 0;
    for (unsigned w : warp_order)
        for (int l = 0; l < WARP; ++l) resume(b, (int)(w * WARP + l));
    for (;;) {
        // Formatted only for an error: this loop runs at every meeting.
        auto where = [&](unsigned w) {
            return " (block " + std::to_string(block) + ", warp " + std::to_string(w) + ")";
        };
        unsigned alive = 0, at_barrier = 0;
        for (unsigned lane = 0; lane < b.threads; ++lane) {
            alive += !b.exited[lane];
            at_barrier += !b.exited[lane] && b.at[lane].op == Op::Barrier;
        }
        if (alive == 0) return b.fault;
        bool progress = false;
        for (unsigned w : warp_order) {
            const int first = (int)(w * WARP);
            bool waits = false;
            for (int l = 0; l < WARP; ++l) {
                const Op op = b.at[first + l].op;
                waits |= !b.exited[first + l] && (op == Op::Shuffle || op == Op::Broadcast || op == Op::Match);
            }
            if (!waits) continue;
            for (int l = 0; l < WARP; ++l)
                if (b.exited[first + l])
                    return "lane " + std::to_string(l) +
                           " left the kernel while others wait at a warp intrinsic" + where(w);
            const Meeting m = b.at[first];
            if (m.mask != 0xffffffffu)
                return "a warp intrinsic with a partial mask, which the emulator does not model" + where(w);
            for (int l = 1; l < WARP; ++l) {
                const Meeting o = b.at[first + l];
                if (o.op != m.op || o.mask != m.mask || o.arg != m.arg)
                    return "lanes 0 and " + std::to_string(l) + " are at different warp intrinsics" + where(w);
            }
            ++b.warps[w].round;
            for (int l = 0; l < WARP; ++l) resume(b, first + l);
            progress = true;
        }
        if (progress) continue;
        // Every live lane waits at the block barrier.
        if (at_barrier != alive || alive != b.threads)
            return "__syncthreads is not reached by every thread of block " + std::to_string(block) + " (" +
                   std::to_string(at_barrier) + " of " + std::to_string(b.threads) + " wait there, " +
                   std::to_string(b.threads - alive) + " left the kernel)";
        ++b.barriers;
        ++epoch;
        for (unsigned w : warp_order)
            for (int l = 0; l < WARP; ++l) resume(b, (int)(w * WARP + l));
    }
}

// ---- guarded copies of the buffers ------------------------------------------

struct Guarded {
    char* original;
    size_t bytes;
    char* mapping;
    size_t mapped;
    char* copy;  // ends at most 15 bytes before the inaccessible page
    int arg;     // the kernel argument it is
};

// Guard pages of the launches under way, for the fault handler.
struct GuardSlot {
    std::atomic<uintptr_t> page{0};
    const char* kernel;
    int arg;
};
GuardSlot guard_slots[512];
struct sigaction previous_segv;
std::atomic<bool> handler_installed{false};

void on_segv(int sig, siginfo_t* info, void* context) {
    const uintptr_t addr = (uintptr_t)info->si_addr;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (auto& slot : guard_slots) {
        const uintptr_t start = slot.page.load();
        if (start > 1 && addr >= start && addr < start + page) {
            char msg[300];
            int n = snprintf(msg, sizeof msg,
                             "kernel emulation: %s accessed memory past the end of its argument %d "
                             "(%zu bytes past it)\n",
                             slot.kernel, slot.arg, (size_t)(addr - start));
            if (n > 0) (void)!write(2, msg, (size_t)n);
            _exit(101);
        }
    }
    // Not ours: let the previous handler (or the default action) see it.
    sigaction(SIGSEGV, &previous_segv, nullptr);
    (void)sig;
    (void)context;
}

void install_handler() {
    bool expected = false;
    if (!handler_installed.compare_exchange_strong(expected, true)) return;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous_segv);
}

// A slot's page is 0 when free, 1 while it is being filled.
GuardSlot* register_guard(uintptr_t page, const char* kernel, int arg) {
    for (auto& slot : guard_slots) {
        uintptr_t empty = 0;
        if (slot.page.compare_exchange_strong(empty, 1)) {
            slot.kernel = kernel;
            slot.arg = arg;
            slot.page.store(page);
            return &slot;
        }
    }
    return nullptr;
}

bool guard(Guarded& g, const char* kernel, int arg, std::vector<GuardSlot*>& slots) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t data_pages = (g.bytes + 15 + page - 1) / page;
    g.mapped = (data_pages + 1) * page;
    void* m = mmap(nullptr, g.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
    g.mapping = (char*)m;
    char* guard_page = g.mapping + data_pages * page;
    if (mprotect(guard_page, page, PROT_NONE) != 0) {
        munmap(g.mapping, g.mapped);
        return false;
    }
    // At the original's address modulo 16, so that vector accesses are
    // aligned here exactly when they are on the device.
    g.copy = guard_page - g.bytes;
    g.copy -= ((uintptr_t)g.copy - (uintptr_t)g.original) & 15;
    memcpy(g.copy, g.original, g.bytes);
    if (GuardSlot* s = register_guard((uintptr_t)guard_page, kernel, arg)) slots.push_back(s);
    return true;
}

// ---- checked, counted memory accesses ------------------------------------------

enum class Access { Read, Write, Atomic };

// A word of a shared array: when it was last written and read, and by whom.
struct SharedWord {
    uint64_t written = 0, read = 0;
    int writer = -1, reader = -1;  // reader -2: several threads
    bool atomic = false;
};

struct SharedRegion {
    uintptr_t base;
    size_t bytes;
    const char* name;
    std::vector<SharedWord> words;
};

thread_local std::vector<SharedRegion> shared_regions;

bool shared_region(void* base, size_t bytes, const char* name) {
    shared_regions.push_back({(uintptr_t)base, bytes, name, std::vector<SharedWord>((bytes + 3) / 4)});
    return true;
}

// The launch's buffers and this worker's byte counts per argument.
thread_local const std::vector<Guarded>* launch_buffers = nullptr;
thread_local uint64_t* bytes_read = nullptr;
thread_local uint64_t* bytes_written = nullptr;

void shared_access(SharedRegion& r, uintptr_t addr, size_t bytes, Access a) {
    const int lane = current_lane;
    for (size_t w = (addr - r.base) / 4; w <= (addr + bytes - 1 - r.base) / 4; ++w) {
        SharedWord& s = r.words[w];
        // Formatted only for a fault: this runs at every shared access.
        auto word = [&] { return std::string(r.name) + " (word " + std::to_string(w) + ")"; };
        if (a == Access::Read) {
            if (s.written < block_epoch)
                fault("reads shared " + word() + " before any thread of the block wrote it");
            else if (s.written == epoch && (s.writer != lane || s.atomic))
                fault("reads shared " + word() + ", which thread " + std::to_string(s.writer) +
                      " wrote after the last __syncthreads");
            if (s.read != epoch) {
                s.read = epoch;
                s.reader = lane;
            } else if (s.reader != lane) {
                s.reader = -2;
            }
        } else {
            const bool atomic = a == Access::Atomic;
            if (s.written == epoch && s.writer != lane && !(atomic && s.atomic))
                fault("writes shared " + word() + ", which thread " + std::to_string(s.writer) +
                      " wrote after the last __syncthreads");
            if (s.read == epoch && s.reader != lane)
                fault("writes shared " + word() + ", which " +
                      (s.reader == -2 ? std::string("other threads") : "thread " + std::to_string(s.reader)) +
                      " read after the last __syncthreads");
            s.written = epoch;
            s.writer = lane;
            s.atomic = atomic;
        }
    }
}

// Checks one access and counts its bytes; false when it must not happen
// (the launch then fails with the fault).
bool check(const void* p, size_t bytes, Access a) {
    const uintptr_t addr = (uintptr_t)p;
    const char* what = a == Access::Read ? "load" : a == Access::Write ? "store" : "atomic";
    if (addr % bytes != 0) {
        fault("makes a misaligned " + std::to_string(bytes) + "-byte " + what + " (address % " +
              std::to_string(bytes) + " = " + std::to_string(addr % bytes) + ")");
        return false;
    }
    for (SharedRegion& r : shared_regions)
        if (addr >= r.base && addr + bytes <= r.base + r.bytes) {
            shared_access(r, addr, bytes, a);
            return true;
        }
    if (launch_buffers)
        for (const Guarded& g : *launch_buffers)
            if (addr >= (uintptr_t)g.copy && addr + bytes <= (uintptr_t)g.copy + g.bytes) {
                if (a != Access::Write) bytes_read[g.arg] += bytes;
                if (a != Access::Read) bytes_written[g.arg] += bytes;
                return true;
            }
    fault("makes a " + std::to_string(bytes) + "-byte " + what + " outside every buffer argument");
    return false;
}

// ---- the kernel table --------------------------------------------------------

struct Kernel {
    const char* name;
    std::vector<size_t> sizes;
    void* fn;
    void (*invoke)(void* fn, void* const* values);
};

template <class T>
T read(const void* p) {
    T v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <class... A, size_t... I>
void call_with(void (*f)(A...), void* const* values, std::index_sequence<I...>) {
    f(read<A>(values[I])...);
}

template <class... A>
Kernel kernel(const char* name, void (*f)(A...)) {
    Kernel k;
    k.name = name;
    k.sizes = {sizeof(A)...};
    k.fn = (void*)f;
    k.invoke = [](void* fn, void* const* values) {
        call_with((void (*)(A...))fn, values, std::index_sequence_for<A...>{});
    };
    return k;
}

}  // namespace emu

// ---- what the kernel source sees ---------------------------------------------

#define SEESAW_HOST_EMULATION 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define threadIdx (emu::current->thread_idx[emu::current_lane])
#define blockIdx (emu::current->block_idx)
#define blockDim (emu::current->block_dim)
#define gridDim (emu::current->grid_dim)

typedef unsigned short u16;

inline float f16_to_f32(u16 h) {
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}
inline u16 f32_to_f16(float f) {
    _Float16 v = (_Float16)f;  // round to nearest even, as cvt.rn
    u16 h;
    memcpy(&h, &v, 2);
    return h;
}

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float fast_exp2(float x) { return exp2f(x); }
inline float fast_log2(float x) { return log2f(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
inline T ld(const T* p) {
    T v{};
    if (emu::check(p, sizeof(T), emu::Access::Read)) memcpy(&v, p, sizeof v);
    return v;
}
template <class T>
inline T ld_volatile(const T* p) {
    return ld(p);
}
template <class T>
inline void st(T* p, T v) {
    if (emu::check(p, sizeof(T), emu::Access::Write)) memcpy(p, &v, sizeof v);
}
template <class T>
inline void st_volatile(T* p, T v) {
    st(p, v);
}
// A per-block array: per OS thread (a block runs on one), registered once per
// thread for the access checks.
#define SEESAW_SHARED(type, name, n)                                                          \
    static thread_local type name[n];                                                         \
    static thread_local const bool name##_registered = emu::shared_region(name, sizeof name, #name); \
    (void)name##_registered

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    if (!emu::check(p, sizeof *p, emu::Access::Atomic)) return 0;
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline long long atomicMin(long long* p, long long v) {
    if (!emu::check(p, sizeof *p, emu::Access::Atomic)) return 0;
    long long old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __syncthreads() { emu::barrier(); }

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    const uint64_t* row = emu::meet(emu::Op::Shuffle, mask, lane_mask, __float_as_uint(v));
    return __int_as_float((int)(uint32_t)row[((emu::current_lane % emu::WARP) ^ lane_mask) & 31]);
}

inline float __shfl_sync(unsigned mask, float v, int src) {
    const uint64_t* row = emu::meet(emu::Op::Broadcast, mask, src, __float_as_uint(v));
    return __int_as_float((int)(uint32_t)row[src & 31]);
}

inline long long __shfl_sync(unsigned mask, long long v, int src) {
    const uint64_t* row = emu::meet(emu::Op::Broadcast, mask, src, (uint64_t)v);
    return (long long)row[src & 31];
}

inline unsigned __match_any_sync(unsigned mask, long long v) {
    const uint64_t* row = emu::meet(emu::Op::Match, mask, 0, (uint64_t)v);
    unsigned same = 0;
    for (int lane = 0; lane < emu::WARP; ++lane)
        if (row[lane] == (uint64_t)v) same |= 1u << lane;
    return same;
}

#include "seesaw.cu"

// ---- faults planted for the emulator's own tests (src/fused/emulation.rs) ----

// A 16-byte load 4 bytes past a 16-byte boundary.
void planted_misaligned_vector(const float* p) {
    if (threadIdx.x == 0) (void)ld((const Vec16*)(p + 1));
}
// A barrier that only the first warp reaches.
void planted_partial_barrier(const float*) {
    if (threadIdx.x < 32) __syncthreads();
}
// Lane 2 reads a word that lane 1 wrote, with no barrier between.
void planted_shared_read_race(float* out) {
    SEESAW_SHARED(float, cell, 1);
    if (threadIdx.x == 0) st(&cell[0], 0.0f);
    __syncthreads();
    if (threadIdx.x == 1) st(&cell[0], 1.0f);
    if (threadIdx.x == 2) st(out, ld(&cell[0]));
}
// Lane 2 overwrites a word that lane 1 read, with no barrier between.
void planted_shared_write_race(float* out) {
    SEESAW_SHARED(float, cell, 1);
    if (threadIdx.x == 0) st(&cell[0], 0.0f);
    __syncthreads();
    if (threadIdx.x == 1) st(out, ld(&cell[0]));
    if (threadIdx.x == 2) st(&cell[0], 2.0f);
}
// Reads shared memory no thread of the block wrote.
void planted_unwritten_shared(float* out) {
    SEESAW_SHARED(float, never, 64);
    if (threadIdx.x == 0) st(out, ld(&never[5]));
}
// Writes one element past the end of its buffer.
void planted_past_the_end(float* p, long long n) {
    if (threadIdx.x == 0) st(p + n, 1.0f);
}
// The same exchange as the races, done right: no fault.
void planted_exchange_done_right(float* out) {
    SEESAW_SHARED(float, cells, 64);
    st(&cells[threadIdx.x], (float)threadIdx.x);
    __syncthreads();
    st(out + threadIdx.x, ld(&cells[(threadIdx.x + 1) % 64]));
}

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

// ---- the launch entry point --------------------------------------------------

namespace emu {

#define ROW_KERNELS(SUFFIX) \
    kernel("seesaw_forward_" #SUFFIX, seesaw_forward_##SUFFIX), \
        kernel("seesaw_backward_" #SUFFIX, seesaw_backward_##SUFFIX), \
        kernel("seesaw_forward_backward_" #SUFFIX, seesaw_forward_backward_##SUFFIX)
#define PLANTED(NAME) kernel(#NAME, NAME)

const std::vector<Kernel>& kernels() {
    static const std::vector<Kernel> table = {
        ROW_KERNELS(f32_warp), ROW_KERNELS(f16_warp), ROW_KERNELS(bf16_warp),
        ROW_KERNELS(f32_block), ROW_KERNELS(f16_block), ROW_KERNELS(bf16_block),
        kernel("seesaw_prepare", seesaw_prepare), kernel("seesaw_count", seesaw_count),
        PLANTED(planted_misaligned_vector), PLANTED(planted_partial_barrier),
        PLANTED(planted_shared_read_race), PLANTED(planted_shared_write_race),
        PLANTED(planted_unwritten_shared), PLANTED(planted_past_the_end),
        PLANTED(planted_exchange_done_right)};
    return table;
}

}  // namespace emu

// One argument as cuLaunchKernel takes it: `size` bytes of `value`, or of
// `bytes` when the value is wider (a struct passed by value). A buffer
// (`buffer_bytes` > 0, `value` its address) is what a pointer argument points
// to: the kernel sees a guarded copy, and changes are copied back.
struct SeesawEmuArg {
    uint64_t value;
    uint64_t size;
    uint64_t buffer_bytes;
    const void* bytes;
};

static int fail(char* error, size_t error_len, const std::string& message) {
    snprintf(error, error_len, "%s", message.c_str());
    return 1;
}

// `traffic`, when not null, receives the bytes the launch read from each
// argument ([n_args]) and then those it wrote ([n_args]).
extern "C" int seesaw_emulate(const char* name, unsigned grid, unsigned block, const SeesawEmuArg* args,
                              size_t n_args, uint64_t* traffic, char* error, size_t error_len) {
    using namespace emu;
    const Kernel* k = nullptr;
    for (const Kernel& candidate : kernels())
        if (strcmp(candidate.name, name) == 0) k = &candidate;
    if (!k) return fail(error, error_len, std::string("no kernel named ") + name);
    if (n_args != k->sizes.size())
        return fail(error, error_len,
                    std::string(name) + " takes " + std::to_string(k->sizes.size()) + " arguments, the launch passes " +
                        std::to_string(n_args));
    for (size_t i = 0; i < n_args; ++i)
        if (args[i].size != k->sizes[i])
            return fail(error, error_len,
                        std::string(name) + ": argument " + std::to_string(i) + " is " +
                            std::to_string(args[i].size) + " bytes, the parameter " +
                            std::to_string(k->sizes[i]));
    if (block == 0 || block % WARP != 0 || block > 1024)
        return fail(error, error_len, "block size " + std::to_string(block) + " is not a multiple of 32 up to 1024");

    install_handler();
    std::vector<Guarded> buffers;
    std::vector<GuardSlot*> slots;
    // Frees the guarded copies, first copying back what the kernel changed
    // when it ran.
    auto release = [&](bool copy_back) {
        for (GuardSlot* s : slots) s->page.store(0);
        for (Guarded& g : buffers) {
            if (copy_back && memcmp(g.copy, g.original, g.bytes) != 0) memcpy(g.original, g.copy, g.bytes);
            munmap(g.mapping, g.mapped);
        }
    };
    std::vector<uint64_t> values(n_args);
    for (size_t i = 0; i < n_args; ++i) {
        values[i] = args[i].value;
        if (args[i].buffer_bytes > 0 && args[i].value != 0) {
            Guarded g = {(char*)(uintptr_t)args[i].value, (size_t)args[i].buffer_bytes, nullptr, 0, nullptr, (int)i};
            if (!guard(g, name, (int)i, slots)) {
                release(false);
                return fail(error, error_len, "mmap failed for a guarded copy");
            }
            buffers.push_back(g);
            values[i] = (uint64_t)(uintptr_t)g.copy;
        }
    }
    std::vector<void*> pointers(n_args);
    // Little-endian: the first bytes of a u64 slot are a 4-byte value.
    for (size_t i = 0; i < n_args; ++i) pointers[i] = args[i].bytes ? (void*)args[i].bytes : (void*)&values[i];

    std::atomic<bool> failed{false};
    std::string first_error;
    std::atomic_flag error_taken = ATOMIC_FLAG_INIT;
    // Blocks run one after another on each worker, and a block's warps in
    // turn between its meetings, so a warp that writes into another's rows
    // goes unnoticed when that one runs later: each launch runs its blocks,
    // and each block its warps, in a different shuffled order (seeded by the
    // launch's number, so a failure repeats in the same process), which puts
    // a stray write after its victim about half the time.
    static std::atomic<uint64_t> launches{0};
    uint64_t seed = 0x9e3779b97f4a7c15ull * (launches.fetch_add(1) + 1);
    auto shuffled = [&seed](size_t n) {
        std::vector<unsigned> order(n);
        for (size_t i = 0; i < n; ++i) order[i] = (unsigned)i;
        for (size_t i = n; i > 1; --i) {  // Fisher-Yates, splitmix64
            uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            std::swap(order[i - 1], order[(z ^ (z >> 31)) % i]);
        }
        return order;
    };
    const std::vector<unsigned> block_order = shuffled(grid);
    const std::vector<unsigned> warp_order = shuffled(block / WARP);
    std::atomic<size_t> next{0};
    auto report = [&](const std::string& e) {
        if (!error_taken.test_and_set()) first_error = std::string(name) + ": " + e;
        failed.store(true);
    };
    std::vector<std::vector<uint64_t>> counted;  // per worker: reads, then writes, per argument
    const unsigned n_threads = std::max(1u, std::min(grid, std::thread::hardware_concurrency()));
    counted.assign(n_threads, std::vector<uint64_t>(2 * n_args, 0));
    auto worker = [&](unsigned id) {
        launch_buffers = &buffers;
        bytes_read = counted[id].data();
        bytes_written = counted[id].data() + n_args;
        // Running out of memory (a block's fiber stacks are large) is an
        // error of the launch, as on a device, not an exception that would
        // end the process from a worker thread.
        try {
            std::unique_ptr<Block> b(new Block);
            b->stacks.reset(new char[(size_t)block * STACK_BYTES]);
            b->grid_dim.x = grid;
            b->block_dim.x = block;
            b->threads = block;
            b->body = {k->invoke, k->fn, pointers.data()};
            for (size_t i; !failed.load() && (i = next.fetch_add(1)) < block_order.size();) {
                const std::string e = run_block(*b, block_order[i], warp_order);
                if (!e.empty()) report(e);
            }
        } catch (const std::bad_alloc&) {
            report("out of host memory for the emulated threads");
        }
        current = nullptr;
        launch_buffers = nullptr;
    };
    std::vector<std::thread> threads;
    try {
        for (unsigned t = 1; t < n_threads; ++t) threads.emplace_back(worker, t);
    } catch (const std::exception&) {
        report("could not start the emulator's worker threads");
    }
    worker(0);
    for (auto& t : threads) t.join();
    if (traffic)
        for (size_t i = 0; i < 2 * n_args; ++i) {
            traffic[i] = 0;
            for (const auto& c : counted) traffic[i] += c[i];
        }

    release(true);
    if (failed.load()) return fail(error, error_len, first_error);
    return 0;
}
