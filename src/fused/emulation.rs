//! The host emulator's side of a launch (feature `testing`): after
//! [`crate::testing::emulate_kernels`], fused calls on CPU tensors take the
//! CUDA path's host code (`cuda.rs`: argument lists, launch shapes, the count
//! kernel, poisoning) and run the kernels of `kernels/seesaw.cu` in the host
//! emulator of `kernels/emulator.cpp`, instead of the CPU mirror. The
//! emulator also checks what a GPU would not report, or would fault on:
//! argument lists that do not match a kernel's parameters, misaligned
//! accesses, accesses outside every buffer, warp intrinsics some lanes miss,
//! barriers some threads miss and races on shared memory; and it counts the
//! bytes each launch reads and writes in each buffer
//! ([`crate::testing::take_kernel_traffic`]).

use std::ffi::{c_char, c_int, CString};

use anyhow::{bail, Result};

use super::cuda::Arg;

/// One argument as `kernels/emulator.cpp` takes it (`SeesawEmuArg`).
#[repr(C)]
struct EmuArg {
    value: u64,
    size: u64,
    buffer_bytes: u64,
    /// The value's bytes when it is wider than `value` (the parameter
    /// block), else null.
    bytes: *const u8,
}

extern "C" {
    fn seesaw_emulate(
        name: *const c_char,
        grid: u32,
        block: u32,
        args: *const EmuArg,
        n_args: usize,
        traffic: *mut u64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

impl From<&Arg> for EmuArg {
    fn from(arg: &Arg) -> EmuArg {
        let (value, size, buffer_bytes, bytes) = match arg {
            Arg::Buffer { addr, bytes } => (*addr, 8, *bytes, std::ptr::null()),
            Arg::I64(v) => (*v as u64, 8, 0, std::ptr::null()),
            Arg::Params(p) => (0, std::mem::size_of_val(p) as u64, 0, p as *const _ as *const u8),
        };
        EmuArg {
            value,
            size,
            buffer_bytes,
            bytes,
        }
    }
}

/// Runs `kernel` on the host over a 1-D grid; returns when it is done.
pub(crate) fn launch(kernel: &str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
    let name = CString::new(kernel)?;
    let args: Vec<EmuArg> = args.iter().map(EmuArg::from).collect();
    let mut error = vec![0u8; 1024];
    let mut traffic = vec![0u64; 2 * args.len()];
    // SAFETY: the emulator reads `args.len()` arguments (a wide one from
    // its `bytes`, which point into `args`, alive for the call), copies each buffer
    // argument's `buffer_bytes` from its address (live CPU tensors, per
    // `Executor::launch`'s contract), writes `2 * args.len()` counts into
    // `traffic` and at most `error.len()` bytes, NUL-terminated, into `error`.
    let status = unsafe {
        seesaw_emulate(
            name.as_ptr(),
            grid,
            block,
            args.as_ptr(),
            args.len(),
            traffic.as_mut_ptr(),
            error.as_mut_ptr().cast(),
            error.len(),
        )
    };
    if status != 0 {
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        bail!("kernel emulation: {}", String::from_utf8_lossy(&error[..end]));
    }
    let written = traffic.split_off(args.len());
    crate::testing::record_traffic(crate::testing::KernelTraffic {
        kernel: kernel.to_string(),
        grid,
        read: traffic,
        written,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn count_args(labels: &Tensor, counts: &Tensor) -> Vec<Arg> {
        vec![
            Arg::of(labels),
            Arg::I64(labels.numel() as i64),
            Arg::I64(counts.numel() as i64),
            Arg::I64(1),
            Arg::of(counts),
            Arg::Buffer { addr: 0, bytes: 0 },
        ]
    }

    #[test]
    fn the_count_kernel_runs_and_skips_out_of_range_labels() {
        let labels = Tensor::from_slice(&[0i64, 1, 1, 5, -1, 2, 1]);
        let counts = Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu));
        launch("seesaw_count", 1, 64, &count_args(&labels, &counts)).unwrap();
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), [1, 3, 1]);
    }

    fn planted(kernel: &str, args: &[Arg]) -> Result<()> {
        launch(kernel, 1, 64, args)
    }

    fn expect_fault(kernel: &str, args: &[Arg], expected: &str) {
        let err = planted(kernel, args).unwrap_err().to_string();
        assert!(err.contains(expected), "{kernel}: {err}");
    }

    /// Each fault the emulator must catch, planted in a kernel of its own
    /// (kernels/emulator.cpp), fails its launch with a message naming it;
    /// the same exchange done right passes.
    #[test]
    fn planted_faults_are_caught() {
        let buffer = Tensor::zeros([64], (Kind::Float, tch::Device::Cpu));
        let arg = [Arg::of(&buffer)];
        expect_fault(
            "planted_misaligned_vector",
            &arg,
            "thread 0 of block 0 makes a misaligned 16-byte load (address % 16 = 4)",
        );
        expect_fault(
            "planted_partial_barrier",
            &arg,
            "__syncthreads is not reached by every thread of block 0",
        );
        expect_fault(
            "planted_shared_read_race",
            &arg,
            "thread 2 of block 0 reads shared cell (word 0), which thread 1 wrote after the last __syncthreads",
        );
        expect_fault(
            "planted_shared_write_race",
            &arg,
            "thread 2 of block 0 writes shared cell (word 0), which thread 1 read after the last __syncthreads",
        );
        expect_fault(
            "planted_unwritten_shared",
            &arg,
            "reads shared never (word 5) before any thread of the block wrote it",
        );
        expect_fault(
            "planted_past_the_end",
            &[Arg::of(&buffer), Arg::I64(64)],
            "makes a 4-byte store outside every buffer argument",
        );
        assert_eq!(Vec::<f32>::try_from(&buffer).unwrap(), vec![0.0; 64]);
        planted("planted_exchange_done_right", &arg).unwrap();
        let expected: Vec<f32> = (0..64).map(|t| ((t + 1) % 64) as f32).collect();
        assert_eq!(Vec::<f32>::try_from(&buffer).unwrap(), expected);
    }

    #[test]
    fn argument_lists_that_do_not_match_the_kernel_are_errors() {
        let labels = Tensor::from_slice(&[0i64]);
        let counts = Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu));
        let mut args = count_args(&labels, &counts);
        args.pop();
        let err = launch("seesaw_count", 1, 32, &args).unwrap_err().to_string();
        assert!(
            err.contains("seesaw_count takes 6 arguments, the launch passes 5"),
            "{err}"
        );
        let mut args = count_args(&labels, &counts);
        args[1] = Arg::Params(crate::params::SeesawParams::constants(0.8, 2.0, -4.6));
        let err = launch("seesaw_count", 1, 32, &args).unwrap_err().to_string();
        let size = std::mem::size_of::<crate::params::SeesawParams>();
        assert!(
            err.contains(&format!("argument 1 is {size} bytes, the parameter 8")),
            "{err}"
        );
        let err = launch("seesaw_nothing", 1, 32, &args).unwrap_err().to_string();
        assert!(err.contains("no kernel named seesaw_nothing"), "{err}");
        let err = launch("seesaw_count", 1, 48, &count_args(&labels, &counts))
            .unwrap_err()
            .to_string();
        assert!(err.contains("block size 48"), "{err}");
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), [0, 0, 0]);
    }
}
