//! The kernel source compiles with NVRTC for the GPUs the crate targets, and
//! the on-disk cache serves later compilations. NVRTC ships in the PyTorch
//! wheel and needs no GPU, so this runs in CPU-only CI.

use std::time::Instant;

use seesaw_loss::cuda::{compile_with_cache, nvrtc_available, ImageFormat};

/// NVRTC must be there in CI (it ships in the torch wheel); elsewhere a
/// machine without it skips these tests.
fn nvrtc_here() -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "NVRTC must be loadable in CI (it ships in the torch wheel)"
    );
    eprintln!("skipped: NVRTC cannot be loaded here");
    false
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_kernels_compile_to_cubins_for_sm80_and_sm90() {
    if !nvrtc_here() {
        return;
    }
    for arch in [80, 90] {
        let image = compile_with_cache(arch, None).unwrap_or_else(|e| panic!("sm_{arch}: {e:#}"));
        assert_eq!(image.format, ImageFormat::Cubin, "sm_{arch}");
        assert_eq!(image.target, arch);
        assert!(image.bytes.starts_with(b"\x7fELF"), "a cubin is an ELF file");
        for entry in [
            "seesaw_forward_backward_f32",
            "seesaw_forward_backward_f16",
            "seesaw_forward_backward_bf16",
            "seesaw_count",
        ] {
            assert!(
                contains(&image.bytes, entry),
                "{entry} missing from the sm_{arch} cubin"
            );
        }
    }
}

#[test]
fn an_architecture_newer_than_nvrtc_knows_gets_ptx_for_the_newest_it_knows() {
    if !nvrtc_here() {
        return;
    }
    let image = compile_with_cache(990, None).unwrap();
    assert_eq!(image.format, ImageFormat::Ptx);
    assert!(image.target < 990 && image.target >= 90, "target {}", image.target);
    let text = String::from_utf8_lossy(&image.bytes);
    assert!(
        text.contains(&format!(".target sm_{}", image.target)),
        "PTX for the wrong target"
    );
    assert!(text.contains(".entry seesaw_forward_f32"));
}

#[test]
fn an_architecture_below_any_nvrtc_knows_is_an_error_not_a_panic() {
    if !nvrtc_here() {
        return;
    }
    let err = compile_with_cache(1, None).unwrap_err();
    assert!(format!("{err:#}").contains("nothing at or below sm_1"), "{err:#}");
}

/// The first call's compilation with a cold cache, then the same with the
/// entry written: the warm call reads the file and skips NVRTC.
#[test]
fn the_disk_cache_serves_the_second_compilation() {
    if !nvrtc_here() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("seesaw-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let cold = compile_with_cache(90, Some(&dir)).unwrap();
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let warm = compile_with_cache(90, Some(&dir)).unwrap();
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("sm_90 kernels: cold cache {cold_ms:.1} ms, warm cache {warm_ms:.2} ms");
    assert!(!cold.from_disk_cache && warm.from_disk_cache);
    assert_eq!(cold.bytes, warm.bytes);
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries.len(), 1, "one entry, no temporary left: {entries:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
