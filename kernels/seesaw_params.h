// The parameter block of one call and the constants shared by the kernels
// (kernels/seesaw.cu), their host emulator (kernels/emulator.cpp), the
// autograd shim (shim/seesaw_autograd.cpp) and the Rust side.
//
// SeesawParams is filled once on the host (src/params.rs declares the same
// struct with #[repr(C)]; a test compares sizes and offsets) and passed by
// value: to every kernel as its first argument, and to the autograd node,
// which keeps it for backward. Adding a parameter touches this declaration
// and the Rust one, not every call site.
//
// The SEESAW_* constants below are read by build.rs into Rust constants of
// the same names (without the prefix): a `f` suffix makes an f32, anything
// else a u32. Keep each on one line of the form `#define SEESAW_NAME value`.
//
// Plain C types only: NVRTC compiles this without any system header.

#ifndef SEESAW_PARAMS_H
#define SEESAW_PARAMS_H

// Warps per thread block of the row kernels (256 threads): a warp per row in
// the warp layout, the whole block per row in the block layout.
#define SEESAW_WARPS_PER_BLOCK 8
// Logits each thread of a row kernel holds in registers: a row of up to
// 32 x 40 = 1280 logits fits a warp, of up to 256 x 40 = 10240 a block, and
// is read from global memory once. A wider row is read once per pass.
// (scripts/sass-report.sh compiles a second value to measure the cost per
// logit; everything else takes this one.)
#ifndef SEESAW_HELD_PER_THREAD
#define SEESAW_HELD_PER_THREAD 40
#endif
// Blocks of a row kernel that one SM keeps resident, which the grid is sized
// for (the blocks then loop over the rows): 2 x 256 threads at no more than
// 128 registers each (scripts/sass-report.sh checks the budget).
#define SEESAW_BLOCKS_PER_SM 2
// Threads per block of the count kernel.
#define SEESAW_COUNT_BLOCK 256
// Threads of the prepare kernel's one block.
#define SEESAW_PREPARE_THREADS 1024
// The call state the prepare kernel writes ([SEESAW_STATE_LEN] int64, one per
// call): whether the batch is bad (then nothing was counted, every loss is
// NaN and every gradient zero), the positive rows (labels below C), and the
// ticket the row kernels' blocks take to find the last one, which reduces.
#define SEESAW_STATE_BAD 0
#define SEESAW_STATE_POSITIVE 1
#define SEESAW_STATE_TICKET 2
#define SEESAW_STATE_LEN 4
// Floats the loss pass keeps per row for the gradient pass: a base (the
// row's maximum logit) and lse, lse' relative to it.
#define SEESAW_ROW_STATS 3
// The error record ([SEESAW_ERROR_LEN] int64, one per loss, kept across
// calls): the first bad batch's first problem, written once (the flag last)
// and cleared by the host when it reports it.
#define SEESAW_ERROR_SET 0
#define SEESAW_ERROR_KIND 1
#define SEESAW_ERROR_ROW 2
#define SEESAW_ERROR_VALUE 3
#define SEESAW_ERROR_LEN 4
// Kinds of problem: a label out of range (value: the label), a weight that is
// not finite (value: its f32 bits), a negative count (row: the counter).
#define SEESAW_ERROR_LABEL 1
#define SEESAW_ERROR_WEIGHT 2
#define SEESAW_ERROR_COUNT 3
// Below this a sum of exponentials is treated as underflowed (src/math.rs,
// "Shifts instead of an online maximum"): far above f32's smallest normal,
// far below any real sum.
#define SEESAW_UNDERFLOW 1e-30f
// The same for the sum of a row held in registers, whose terms are products
// that flush to 0 below f32's smallest normal (~1.2e-38): at or above this
// floor the flushed terms change the sum by less than 1e-13 of it; below
// it the row is computed again by the exact path.
#define SEESAW_HELD_UNDERFLOW 1e-20f

struct SeesawParams {
    // Rows of the call, and elements from one row of logits to the next
    // (set per launch from the logits' layout).
    long long rows;
    long long row_stride;
    // Divides a mean instead of the row count (plus f32 epsilon) when
    // `has_avg_factor` is non-zero.
    double avg_factor;
    // C, the number of object classes.
    int classes;
    // 1: [N, C + 2] logits with objectness in columns C, C + 1; 0: [N, C].
    int detection;
    // 0 none, 1 sum, 2 mean.
    int reduction;
    int has_avg_factor;
    // The Seesaw constants in the f32 the kernels compute in: the mitigation
    // and compensation exponents and log(eps).
    float p;
    float q;
    float log_eps;
    // Factor on both parts of the loss.
    float loss_weight;
};

#endif
