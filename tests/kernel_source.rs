//! The kernel source compiles with NVRTC for the GPUs the crate targets. NVRTC
//! ships in the PyTorch wheel and needs no GPU, so this runs in CPU-only CI.

#[test]
fn kernel_compiles_with_nvrtc_for_sm80_and_sm90() {
    if !seesaw_loss::cuda::nvrtc_available() {
        assert!(
            std::env::var("CI").is_err(),
            "NVRTC must be loadable in CI (it ships in the torch wheel)"
        );
        eprintln!("skipped: NVRTC cannot be loaded here");
        return;
    }
    for arch in [80, 90] {
        let ptx = seesaw_loss::cuda::compile_ptx(arch).unwrap_or_else(|e| panic!("sm_{arch}: {e:#}"));
        let src = ptx.to_src();
        assert!(src.contains(&format!(".target sm_{arch}")), "PTX for the wrong target");
        for entry in [
            "seesaw_fused_f32",
            "seesaw_fused_f16",
            "seesaw_fused_bf16",
            "seesaw_count",
        ] {
            assert!(src.contains(&format!(".entry {entry}")), "{entry} missing from the PTX");
        }
    }
}

#[test]
fn compile_errors_come_back_with_the_compiler_log() {
    if !seesaw_loss::cuda::nvrtc_available() {
        return;
    }
    // An architecture NVRTC does not know is reported, not a panic.
    let err = seesaw_loss::cuda::compile_ptx(1).unwrap_err();
    assert!(format!("{err:#}").contains("NVRTC"), "{err:#}");
}
