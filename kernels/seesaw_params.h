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

// Rows per thread block of the row kernels: one warp per row.
#define SEESAW_WARPS_PER_BLOCK 8
// Threads per block of the count kernel.
#define SEESAW_COUNT_BLOCK 256
// Below this a sum of exponentials is treated as underflowed (src/math.rs,
// "Shifts instead of an online maximum"): far above f32's smallest normal,
// far below any real sum.
#define SEESAW_UNDERFLOW 1e-30f

struct SeesawParams {
    // Rows of the call, and elements from one row of logits to the next
    // (set per launch from the logits' layout).
    long long rows;
    long long row_stride;
    // Detection: rows whose label is below `classes`, when the host knows
    // them; -1 leaves them to be counted on the device.
    long long positive_rows;
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
