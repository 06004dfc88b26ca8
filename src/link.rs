//! Making libtorch's CUDA backend visible to binaries outside this crate.
//!
//! Nothing in a Rust binary references a symbol of `libtorch_cuda.so`, so the
//! linker's `--as-needed` drops it, libtorch never registers its CUDA
//! backend, and `tch::Cuda::is_available()` is false on a GPU machine. This
//! crate's own tests, examples and benches get `--no-as-needed -ltorch_cuda`
//! from its build script; a downstream binary either adds the same link
//! arguments in its own `build.rs` (see the README) or calls
//! [`load_torch_cuda`] once before its first CUDA call.

use std::ffi::{CStr, CString};

use crate::error::{Error, Result};

/// Loads `libtorch_cuda.so` from the folder of the libtorch already loaded
/// into the process, so that libtorch registers its CUDA backend. Returns
/// `Ok(true)` when the library is loaded (now or before), `Ok(false)` when
/// the libtorch in use has no CUDA build. Harmless to call more than once.
///
/// ```
/// let has_cuda_build = seesaw_loss::link::load_torch_cuda()?;
/// # let _ = has_cuda_build;
/// // A CUDA device is now visible to tch if the machine has one.
/// let _ = tch::Cuda::is_available();
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
pub fn load_torch_cuda() -> Result<bool> {
    let Some(dir) = mapped_dir(|name| name == "libtorch_cpu.so") else {
        return Err(Error::Internal(
            "could not find the folder of the loaded libtorch (libtorch_cpu.so)".into(),
        ));
    };
    let path = dir.join("libtorch_cuda.so");
    if !path.exists() {
        return Ok(false);
    }
    dlopen_global(&path)?;
    Ok(true)
}

/// NVRTC's library in the PyTorch wheel this process's libtorch comes from
/// (`site-packages/nvidia/cu13/lib`, beside `site-packages/torch/lib`), loaded
/// by full path so that a downstream binary needs no `LD_LIBRARY_PATH`.
/// Returns the path when the file exists (loaded or not); `None` when
/// libtorch is not from such a wheel.
pub(crate) fn preload_nvrtc() -> Option<std::path::PathBuf> {
    let torch_lib = mapped_dir(|name| name == "libtorch_cpu.so")?;
    let site_packages = torch_lib.parent()?.parent()?;
    let path = site_packages
        .join("nvidia")
        .join("cu13")
        .join("lib")
        .join("libnvrtc.so.13");
    if !path.exists() {
        return None;
    }
    if let Err(e) = dlopen_global(&path) {
        log::debug!("seesaw-loss: {e:#}");
    }
    Some(path)
}

/// NVRTC loads `libnvrtc-builtins.so.13.x` by name at compile time, from code
/// inside libnvrtc, where this binary's rpath does not apply. Loading it first
/// from the folder libnvrtc came from makes that lookup succeed without
/// `LD_LIBRARY_PATH`. Call after libnvrtc is loaded; does nothing when it is
/// not mapped or has no builtins beside it.
/// The PyTorch wheel's NCCL (`site-packages/nvidia/nccl/lib/libnccl.so.2`
/// beside the loaded libtorch), opened by full path: the wheel has no
/// unversioned `libnccl.so`. Returns the `dlopen` handle.
#[cfg(feature = "nccl")]
pub(crate) fn open_nccl() -> Result<*mut std::ffi::c_void> {
    let torch_lib = mapped_dir(|name| name == "libtorch_cpu.so")
        .ok_or_else(|| Error::Internal("could not find the folder of the loaded libtorch (libtorch_cpu.so)".into()))?;
    let path = torch_lib
        .parent()
        .and_then(|torch| torch.parent())
        .map(|site_packages| {
            site_packages
                .join("nvidia")
                .join("nccl")
                .join("lib")
                .join("libnccl.so.2")
        })
        .filter(|path| path.exists())
        .ok_or_else(|| {
            Error::KernelUnavailable(format!(
                "no NCCL beside libtorch ({}/../../nvidia/nccl/lib/libnccl.so.2)",
                torch_lib.display()
            ))
        })?;
    dlopen_global(&path)
}

pub(crate) fn preload_nvrtc_builtins() -> Result<()> {
    let Some(dir) = mapped_dir(|name| name.starts_with("libnvrtc.so")) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libnvrtc-builtins.so") {
            dlopen_global(&entry.path())?;
        }
    }
    Ok(())
}

/// dlopen with RTLD_GLOBAL; the handle is kept for the life of the process on
/// purpose (what it registers must stay).
fn dlopen_global(path: &std::path::Path) -> Result<*mut std::ffi::c_void> {
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| Error::Internal(format!("{} holds a NUL byte", path.display())))?;
    // SAFETY: dlopen with a valid C string.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(Error::Internal(format!("loading {}: {why}", path.display())));
    }
    Ok(handle)
}

/// The folder of the first library mapped into this process whose file name
/// satisfies `matches`.
fn mapped_dir(matches: impl Fn(&str) -> bool) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let file = std::path::Path::new(line.split_whitespace().nth(5)?);
        if matches(file.file_name()?.to_str()?) {
            file.parent().map(|d| d.to_path_buf())
        } else {
            None
        }
    })
}
