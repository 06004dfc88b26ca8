//! The parameter block of one call, as the kernels, their emulator and the
//! autograd shim take it (`kernels/seesaw_params.h` declares the same struct
//! in C), and the constants that header shares with Rust.

use crate::config::{Head, Reduction, SeesawConfig};

/// The header's `SEESAW_*` constants, read by `build.rs` (their meanings are
/// documented there): block sizes, the underflow bound, and the slots of the
/// call state and the error record.
mod shared {
    #![allow(dead_code)] // the header's full list; Rust uses most of it
    include!(concat!(env!("OUT_DIR"), "/seesaw_constants.rs"));
}
#[allow(unused_imports)] // each constant has its users; the list is the header's
pub(crate) use shared::*;

/// One call's parameters, filled once on the host and passed by value to
/// every kernel (first argument) and to the autograd node. Field meanings are
/// documented in `kernels/seesaw_params.h`; `tests/params_layout.rs` holds
/// the two declarations to the same size and offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SeesawParams {
    pub(crate) rows: i64,
    pub(crate) row_stride: i64,
    pub(crate) avg_factor: f64,
    pub(crate) classes: i32,
    pub(crate) detection: i32,
    pub(crate) reduction: i32,
    pub(crate) has_avg_factor: i32,
    pub(crate) p: f32,
    pub(crate) q: f32,
    pub(crate) log_eps: f32,
    pub(crate) loss_weight: f32,
}

// SAFETY: a plain #[repr(C)] struct of numbers, passed to kernels by value.
unsafe impl cudarc::driver::DeviceRepr for SeesawParams {}

impl SeesawParams {
    /// A call's parameters: the configuration's constants in the f32 the
    /// fused paths compute in, and `rows` and `row_stride` of `cls_score` as
    /// given (a launch that lays the logits out anew sets its own).
    pub(crate) fn new(
        config: &SeesawConfig,
        cls_score_shape: &[i64],
        reduction: Reduction,
        avg_factor: Option<f64>,
    ) -> SeesawParams {
        SeesawParams {
            rows: cls_score_shape.first().copied().unwrap_or(0),
            row_stride: cls_score_shape.get(1).copied().unwrap_or(0),
            avg_factor: avg_factor.unwrap_or(0.0),
            classes: config.num_classes() as i32,
            detection: (config.head() == Head::Detection) as i32,
            reduction: reduction_code(reduction),
            has_avg_factor: avg_factor.is_some() as i32,
            p: config.p as f32,
            q: config.q as f32,
            log_eps: (config.eps as f32).ln(),
            loss_weight: config.loss_weight as f32,
        }
    }

    /// Only the Seesaw constants set (tests of the row algorithm).
    #[cfg(test)]
    pub(crate) fn constants(p: f32, q: f32, log_eps: f32) -> SeesawParams {
        SeesawParams {
            rows: 0,
            row_stride: 0,
            avg_factor: 0.0,
            classes: 0,
            detection: 0,
            reduction: 0,
            has_avg_factor: 0,
            p,
            q,
            log_eps,
            loss_weight: 1.0,
        }
    }

    pub(crate) fn head(&self) -> Head {
        if self.detection != 0 {
            Head::Detection
        } else {
            Head::Classification
        }
    }

    pub(crate) fn reduction(&self) -> Reduction {
        match self.reduction {
            0 => Reduction::None,
            1 => Reduction::Sum,
            _ => Reduction::Mean,
        }
    }

    pub(crate) fn avg_factor(&self) -> Option<f64> {
        (self.has_avg_factor != 0).then_some(self.avg_factor)
    }
}

fn reduction_code(reduction: Reduction) -> i32 {
    match reduction {
        Reduction::None => 0,
        Reduction::Sum => 1,
        Reduction::Mean => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn seesaw_params_layout(out: *mut i64, len: i64) -> i64;
        fn seesaw_shared_constants(out: *mut f64, len: i64) -> i64;
    }

    /// Size, alignment and field offsets in the header's order.
    fn rust_layout() -> Vec<i64> {
        use std::mem::{align_of, offset_of, size_of};
        [
            size_of::<SeesawParams>(),
            align_of::<SeesawParams>(),
            offset_of!(SeesawParams, rows),
            offset_of!(SeesawParams, row_stride),
            offset_of!(SeesawParams, avg_factor),
            offset_of!(SeesawParams, classes),
            offset_of!(SeesawParams, detection),
            offset_of!(SeesawParams, reduction),
            offset_of!(SeesawParams, has_avg_factor),
            offset_of!(SeesawParams, p),
            offset_of!(SeesawParams, q),
            offset_of!(SeesawParams, log_eps),
            offset_of!(SeesawParams, loss_weight),
        ]
        .map(|v| v as i64)
        .to_vec()
    }

    #[test]
    fn the_rust_and_c_parameter_blocks_have_one_layout() {
        let mut c = vec![0i64; 32];
        // SAFETY: the shim writes at most `len` values and returns how many.
        let n = unsafe { seesaw_params_layout(c.as_mut_ptr(), c.len() as i64) };
        c.truncate(n as usize);
        assert_eq!(rust_layout(), c, "size, alignment, then each field's offset");
    }

    #[test]
    fn the_shared_constants_are_the_headers() {
        let mut c = vec![0f64; 8];
        // SAFETY: as above.
        let n = unsafe { seesaw_shared_constants(c.as_mut_ptr(), c.len() as i64) };
        c.truncate(n as usize);
        let rust = [
            WARPS_PER_BLOCK,
            COUNT_BLOCK,
            UNDERFLOW as u32,
            PREPARE_THREADS,
            STATE_LEN,
            ERROR_LEN,
        ];
        assert_eq!(c[2], UNDERFLOW as f64);
        for (i, (c, rust)) in c.iter().zip(rust).enumerate() {
            if i != 2 {
                assert_eq!(*c, rust as f64, "constant {i}");
            }
        }
    }
}
