//! Turning `kernels/seesaw.cu` into a module the driver loads: NVRTC, found
//! once by full path beside the libtorch in use, compiles a cubin for the
//! device's exact architecture (PTX for the newest architecture NVRTC knows,
//! when the device is newer still, for the driver to finish), and an on-disk
//! cache lets later processes skip the compiler. None of this needs a GPU.
//!
//! The cache lives in `$SEESAW_KERNEL_CACHE`, else
//! `$XDG_CACHE_HOME/seesaw-loss/kernels`, else `~/.cache/seesaw-loss/kernels`.
//! An entry's name holds what makes it valid: a hash of the kernel source and
//! its header, NVRTC's version and the target. A cache that cannot be read or
//! written only costs a compilation.

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use cudarc::nvrtc::{result as nvrtc, sys};

/// The kernel source, compiled at run time.
pub const KERNEL_SOURCE: &str = include_str!("../../kernels/seesaw.cu");
/// The parameter header the source includes, handed to NVRTC by name.
pub const PARAMS_HEADER: &str = include_str!("../../kernels/seesaw_params.h");
const PARAMS_HEADER_NAME: &str = "seesaw_params.h";

/// What a compilation produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Machine code for exactly one architecture (`sm_XY`).
    Cubin,
    /// PTX for `compute_XY`, which the driver compiles for a newer device.
    Ptx,
}

/// The compiled kernels for one architecture.
#[derive(Clone, Debug)]
pub struct KernelImage {
    /// The architecture asked for, as `10 * major + minor` (90 for sm_90).
    pub arch: u32,
    /// The architecture the image targets: `arch` for a cubin, the newest
    /// NVRTC knows below it for PTX.
    pub target: u32,
    /// A cubin or PTX.
    pub format: ImageFormat,
    /// The cubin, or the PTX text with its terminating NUL.
    pub bytes: Vec<u8>,
    /// Whether the image came from the on-disk cache.
    pub from_disk_cache: bool,
}

/// NVRTC's version, once it is loaded (probed once per process).
fn nvrtc_version() -> Result<(i32, i32)> {
    static PROBE: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if crate::probe::nvrtc_hidden() {
                return Err("NVRTC is hidden (seesaw_loss::testing::hide_nvrtc)".to_string());
            }
            // Load it by full path first: cudarc then finds the library
            // already in the process under its soname.
            let beside_libtorch = crate::link::preload_nvrtc();
            // SAFETY: only tries to dlopen the library under its usual names.
            if !unsafe { sys::is_culib_present() } {
                return Err(match beside_libtorch {
                    Some(path) => format!(
                        "NVRTC could not be loaded (tried {} and the loader path)",
                        path.display()
                    ),
                    None => "NVRTC (libnvrtc.so.13) could not be loaded: none beside libtorch \
                             (nvidia/cu13/lib of the PyTorch wheel) nor on the loader path"
                        .to_string(),
                });
            }
            crate::link::preload_nvrtc_builtins().map_err(|e| format!("{e:#}"))?;
            let (mut major, mut minor) = (0, 0);
            // SAFETY: the library is present; two out-parameters.
            unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
                .result()
                .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
            Ok((major, minor))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Whether NVRTC can be loaded (no GPU needed).
pub fn nvrtc_available() -> bool {
    nvrtc_version().is_ok()
}

/// The architectures this NVRTC compiles cubins for.
fn supported_archs() -> Result<Vec<u32>> {
    let mut n: c_int = 0;
    // SAFETY: NVRTC is loaded (callers go through `nvrtc_version`).
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| anyhow!("nvrtcGetNumSupportedArchs: {e:?}"))?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `archs` holds the number of entries NVRTC reported.
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| anyhow!("nvrtcGetSupportedArchs: {e:?}"))?;
    Ok(archs.into_iter().map(|a| a as u32).collect())
}

/// The kernels compiled for `arch` (`10 * major + minor`): a cubin when NVRTC
/// knows the architecture, else PTX for the newest one it knows below it.
/// Served from the on-disk cache when an entry exists.
///
/// ```no_run
/// let image = seesaw_loss::cuda::compile(90)?;
/// assert_eq!(image.format, seesaw_loss::cuda::ImageFormat::Cubin);
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
pub fn compile(arch: u32) -> crate::Result<KernelImage> {
    compile_with_cache(arch, cache_dir().as_deref())
}

/// [`compile`] with an explicit cache folder (`None`: no cache). A failure
/// is [`Error::KernelUnavailable`](crate::Error::KernelUnavailable) with
/// NVRTC's reason (its log, for a compile error).
pub fn compile_with_cache(arch: u32, cache: Option<&std::path::Path>) -> crate::Result<KernelImage> {
    compile_or_explain(arch, cache).map_err(|e| crate::Error::KernelUnavailable(format!("{e:#}")))
}

/// [`compile_with_cache`] with the crate's internal error, for the callers
/// that add their own context.
pub(crate) fn compile_or_explain(arch: u32, cache: Option<&std::path::Path>) -> Result<KernelImage> {
    let (major, minor) = nvrtc_version()?;
    let supported = supported_archs()?;
    let (format, target) = if supported.contains(&arch) {
        (ImageFormat::Cubin, arch)
    } else {
        let Some(&newest) = supported.iter().filter(|&&a| a < arch).max() else {
            bail!("NVRTC {major}.{minor} compiles for {supported:?}, nothing at or below sm_{arch}");
        };
        (ImageFormat::Ptx, newest)
    };
    let entry = cache.map(|dir| dir.join(entry_name(major, minor, format, target)));
    if let Some(bytes) = entry.as_ref().and_then(|path| std::fs::read(path).ok()) {
        return Ok(KernelImage {
            arch,
            target,
            format,
            bytes,
            from_disk_cache: true,
        });
    }
    let bytes = run_nvrtc(format, target)?;
    if let Some(path) = &entry {
        if let Err(e) = store(path, &bytes) {
            log::debug!(
                "seesaw-loss: could not write the kernel cache entry {}: {e}",
                path.display()
            );
        }
    }
    Ok(KernelImage {
        arch,
        target,
        format,
        bytes,
        from_disk_cache: false,
    })
}

/// The cache folder, or `None` when no home or cache folder is known.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SEESAW_KERNEL_CACHE") {
        return Some(dir);
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("seesaw-loss").join("kernels"))
}

/// `seesaw-<source hash>-nvrtc<version>-<target>.<cubin|ptx>`.
fn entry_name(major: i32, minor: i32, format: ImageFormat, target: u32) -> String {
    let hash = fnv1a64([KERNEL_SOURCE.as_bytes(), PARAMS_HEADER.as_bytes()]);
    let (prefix, ext) = match format {
        ImageFormat::Cubin => ("sm", "cubin"),
        ImageFormat::Ptx => ("compute", "ptx"),
    };
    format!("seesaw-{hash:016x}-nvrtc{major}.{minor}-{prefix}_{target}.{ext}")
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases (the
/// standard library's does not promise to).
fn fnv1a64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Writes a cache entry whole or not at all (a temporary file renamed), so
/// that a process reading it concurrently never sees half of one.
fn store(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or(std::io::ErrorKind::NotFound)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// One NVRTC compilation of the source for `target`.
fn run_nvrtc(format: ImageFormat, target: u32) -> Result<Vec<u8>> {
    let source = CString::new(KERNEL_SOURCE)?;
    let name = CString::new("seesaw.cu")?;
    let header = CString::new(PARAMS_HEADER)?;
    let header_name = CString::new(PARAMS_HEADER_NAME)?;
    let headers = [header.as_ptr()];
    let header_names = [header_name.as_ptr()];
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings that outlive the program.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            source.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            header_names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| anyhow!("nvrtcCreateProgram: {e:?}"))?;
    let arch = match format {
        ImageFormat::Cubin => format!("--gpu-architecture=sm_{target}"),
        ImageFormat::Ptx => format!("--gpu-architecture=compute_{target}"),
    };
    let options = [arch.as_str(), "--std=c++17"];
    // SAFETY: `prog` was created above and is destroyed once, below.
    let outcome = unsafe { nvrtc::compile_program(prog, &options) }
        .map_err(|e| {
            // SAFETY: as above.
            let log = unsafe { nvrtc::get_program_log(prog) }.unwrap_or_default();
            anyhow!(
                "NVRTC failed to compile kernels/seesaw.cu with {options:?} ({e:?}):\n{}",
                text(&log)
            )
        })
        .and_then(|()| match format {
            // SAFETY: as above; the program compiled.
            ImageFormat::Ptx => unsafe { nvrtc::get_ptx(prog) }
                .map(|ptx| ptx.into_iter().map(|c| c as u8).collect())
                .map_err(|e| anyhow!("nvrtcGetPTX: {e:?}")),
            ImageFormat::Cubin => unsafe { cubin(prog) },
        });
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    outcome
}

/// # Safety
/// `prog` is a program that compiled for an `sm_` target.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| anyhow!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut bytes = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr() as *mut c_char)
        .result()
        .map_err(|e| anyhow!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(bytes)
}

fn text(log: &[c_char]) -> String {
    let bytes: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_say_what_makes_them_valid() {
        let name = entry_name(13, 0, ImageFormat::Cubin, 90);
        assert!(
            name.starts_with("seesaw-") && name.ends_with("-nvrtc13.0-sm_90.cubin"),
            "{name}"
        );
        assert!(entry_name(13, 0, ImageFormat::Ptx, 120).ends_with("-nvrtc13.0-compute_120.ptx"));
        // The hash is FNV-1a's: its published value for "a".
        assert_eq!(fnv1a64([b"a".as_slice()]), 0xaf63_dc4c_8601_ec8c);
    }
}
