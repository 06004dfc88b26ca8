//! Makes the crate's own tests, examples and benches find libtorch and see the
//! GPU without a hand-set `LD_LIBRARY_PATH`.
//!
//! torch-sys publishes the libtorch library folder it linked against as
//! `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata). Two link arguments
//! follow from it:
//! - an rpath to that folder and to the wheel's `nvidia/cu13/lib` (NVRTC), so
//!   the binaries load the same libtorch they were built against;
//! - `--no-as-needed -ltorch_cuda`: nothing in the binary references a symbol
//!   of libtorch_cuda.so, so `--as-needed` drops it, and then libtorch never
//!   registers its CUDA backend (`tch::Cuda::is_available()` is false on a GPU
//!   machine).
//!
//! Link arguments of a build script reach this package's own targets only; the
//! README says what a downstream binary needs (the `seesaw_loss::link` helpers).
//!
//! It reads the constants of `kernels/seesaw_params.h` into Rust
//! (`$OUT_DIR/seesaw_constants.rs`), so each is written once.
//!
//! It also compiles the autograd shim (`shim/seesaw_autograd.cpp`) against the
//! headers next to that library folder (`<lib>/../include`), with the flags
//! torch-sys uses for its own C++ (C++17, the libtorch C++ ABI).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/seesaw.cu");
    println!("cargo:rerun-if-changed=shim/seesaw_autograd.cpp");
    println!("cargo:rerun-if-changed=kernels/emulator.cpp");
    println!("cargo:rerun-if-changed=kernels/seesaw_params.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    write_shared_constants();
    if env::var_os("DOCS_RS").is_some() {
        // docs.rs has no libtorch (the `doc-only` feature): nothing to
        // compile or link, and rustdoc links nothing.
        return;
    }
    let lib = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys publishes DEP_TCH_LIBTORCH_LIB (its `links` metadata)"),
    );
    let testing = env::var_os("CARGO_FEATURE_TESTING").is_some();
    compile_shim(&lib, testing);
    if testing {
        compile_emulator();
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The wheel layout: site-packages/torch/lib and site-packages/nvidia/cu13/lib.
    if let Some(site_packages) = lib.parent().and_then(|torch| torch.parent()) {
        let cu13 = site_packages.join("nvidia").join("cu13").join("lib");
        if cu13.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cu13.display());
            println!("cargo:rustc-env=SEESAW_BUILD_CUDA_LIB_DIR={}", cu13.display());
        }
    }
    println!("cargo:rustc-env=SEESAW_BUILD_TORCH_LIB_DIR={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// `#define SEESAW_NAME value` lines of the parameter header as Rust
/// constants: `f`-suffixed values are f32, the others u32.
fn write_shared_constants() {
    let header = std::fs::read_to_string("kernels/seesaw_params.h").expect("kernels/seesaw_params.h is readable");
    let mut rust = String::new();
    for line in header.lines() {
        let mut words = line.split_whitespace();
        let (Some("#define"), Some(name), Some(value), None) = (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some(name) = name.strip_prefix("SEESAW_") else {
            continue;
        };
        let (ty, value) = match value.strip_suffix('f') {
            Some(v) => ("f32", v),
            None => ("u32", value),
        };
        rust.push_str(&format!("pub(crate) const {name}: {ty} = {value};\n"));
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("seesaw_constants.rs");
    std::fs::write(out, rust).expect("OUT_DIR is writable");
}

fn compile_shim(lib: &std::path::Path, testing: bool) {
    let include = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    // PyTorch's wheels since 2.7 use the C++11 ABI; torch-sys defaults to it too.
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let mut build = cc::Build::new();
    if testing {
        // The operator counter of `seesaw_loss::testing`.
        build.define("SEESAW_TESTING", None);
    }
    build
        .cpp(true)
        .file("shim/seesaw_autograd.cpp")
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // at::parallel_for is a header template: without OpenMP here it
        // compiles to a serial loop (libtorch's own build uses OpenMP too, and
        // torch-sys links libgomp).
        .flag("-fopenmp")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("seesaw_autograd_shim");
}

/// The host emulator of the kernels (feature `testing`, a test aid):
/// plain C++17, no libtorch.
fn compile_emulator() {
    cc::Build::new()
        .cpp(true)
        .file("kernels/emulator.cpp")
        .flag("-std=c++17")
        .flag("-fno-strict-aliasing")
        .opt_level(2)
        .warnings(false)
        .compile("seesaw_kernel_emulator");
}
