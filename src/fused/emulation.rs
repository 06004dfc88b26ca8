//! Test aid (cargo feature `kernel-emulation`): the CUDA path on machines
//! without a GPU. Once [`enable`]d, fused calls on CPU tensors take the CUDA
//! path's host code (`cuda.rs`: argument lists, launch shapes, the count
//! kernel, poisoning) and run the kernels of `kernels/seesaw.cu` in the host
//! emulator of `kernels/emulator.cpp`, instead of the CPU mirror. The
//! emulator also checks what a GPU would not report: argument lists that do
//! not match a kernel's parameters, warp intrinsics some lanes miss, and
//! accesses past the end of a buffer.
//!
//! It is slow (every warp intrinsic switches 32 fibers): for tests with a
//! few thousand rows, not for training.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

use super::cuda::Arg;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Routes every later fused call on CPU tensors, in this process, through
/// the emulated kernels.
///
/// ```
/// seesaw_loss::kernel_emulation::enable();
/// ```
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// One argument as `kernels/emulator.cpp` takes it (`SeesawEmuArg`).
#[repr(C)]
struct EmuArg {
    value: u64,
    size: u64,
    buffer_bytes: u64,
}

extern "C" {
    fn seesaw_emulate(
        name: *const c_char,
        grid: u32,
        block: u32,
        args: *const EmuArg,
        n_args: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

impl From<&Arg> for EmuArg {
    fn from(arg: &Arg) -> EmuArg {
        let (value, size, buffer_bytes) = match *arg {
            Arg::Buffer { addr, bytes } => (addr, 8, bytes),
            Arg::I64(v) => (v as u64, 8, 0),
            Arg::I32(v) => (v as u32 as u64, 4, 0),
            Arg::F32(v) => (v.to_bits() as u64, 4, 0),
        };
        EmuArg {
            value,
            size,
            buffer_bytes,
        }
    }
}

/// Runs `kernel` on the host over a 1-D grid; returns when it is done.
pub(crate) fn launch(kernel: &str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
    let name = CString::new(kernel)?;
    let args: Vec<EmuArg> = args.iter().map(EmuArg::from).collect();
    let mut error = vec![0u8; 1024];
    // SAFETY: the emulator reads `args.len()` arguments, copies each buffer
    // argument's `buffer_bytes` from its address (live CPU tensors, per
    // `Executor::launch`'s contract) and writes at most `error.len()` bytes,
    // NUL-terminated, into `error`.
    let status = unsafe {
        seesaw_emulate(
            name.as_ptr(),
            grid,
            block,
            args.as_ptr(),
            args.len(),
            error.as_mut_ptr().cast(),
            error.len(),
        )
    };
    if status != 0 {
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        bail!("kernel emulation: {}", String::from_utf8_lossy(&error[..end]));
    }
    Ok(())
}
