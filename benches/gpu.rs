//! The GPU benchmark program: the fused paths against the memory floor, the
//! crate's reference path and plain cross-entropy, timed with CUDA events.
//!
//! For every shape and dtype (f32, bf16) it reports the median over many runs
//! of one training step (forward + backward through the autograd node), of
//! `forward_backward` (one fused pass), of the reference path and of
//! cross-entropy; inputs rotate through several buffers so that L2 does not
//! flatter the numbers. In the same run it measures the device's copy
//! bandwidth and reports each fused result as a percentage of the floor
//! (logits read once + gradient written once, at copy bandwidth). It also
//! checks whether a step makes the host wait for the GPU, by timing the host
//! side of a step queued behind a long GPU operation.
//!
//! `--memory` instead measures the device memory held between forward and
//! backward (autograd node versus the surrogate formulation) at the LVIS
//! shape; run it with `PYTORCH_NO_CUDA_MEMORY_CACHING=1` so that freed memory
//! goes back to the driver and `cuMemGetInfo` sees what is held.
//!
//! Without a GPU it says so and exits 0.

use std::sync::Arc;
use std::time::Instant;

mod common;

use anyhow::{Context, Result};
use common::{GPU_SHAPES, SHAPES};
use cudarc::driver::{sys::CUevent_flags, CudaContext, CudaStream};
use seesaw_loss::{Backend, Checks, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

const RUNS: usize = 50;
const WARMUP: usize = 5;
const ROTATE: usize = 4;

struct Timer {
    stream: Arc<CudaStream>,
}

impl Timer {
    /// Median milliseconds of `f(i)` between two events on the null stream.
    fn median_ms(&self, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
        for i in 0..WARMUP {
            f(i)?;
        }
        let mut times = Vec::with_capacity(RUNS);
        for i in 0..RUNS {
            let start = self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            f(i)?;
            let end = self.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            end.synchronize()?;
            times.push(start.elapsed_ms(&end)? as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[RUNS / 2])
    }
}

/// Copy bandwidth in bytes per second (bytes read + written), from a 1 GiB
/// device-to-device copy.
fn copy_bandwidth(timer: &Timer, device: Device) -> Result<f64> {
    let n = 1i64 << 28; // f32 elements: 1 GiB
    let src = Tensor::ones([n], (Kind::Float, device));
    let mut dst = Tensor::empty([n], (Kind::Float, device));
    let ms = timer.median_ms(|_| {
        dst.copy_(&src);
        Ok(())
    })?;
    Ok(2.0 * (n as f64) * 4.0 / (ms * 1e-3))
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    NodeStep,
    ForwardBackward,
    ReferenceStep,
    CrossEntropyStep,
}

/// Each method with its label and its checks: deferred (the CUDA default:
/// no host read, the step never waits for the GPU) or immediate (one host
/// read per call, so the step waits). The reference path always checks
/// immediately.
const METHODS: [(Method, &str, Checks); 6] = [
    (Method::NodeStep, "fused step (node)", Checks::Deferred),
    (Method::NodeStep, "fused step, immediate", Checks::Immediate),
    (Method::ForwardBackward, "fused forward_backward", Checks::Deferred),
    (
        Method::ForwardBackward,
        "forward_backward, immediate",
        Checks::Immediate,
    ),
    (Method::ReferenceStep, "reference step", Checks::Immediate),
    (Method::CrossEntropyStep, "cross-entropy step", Checks::Immediate),
];

fn run_method(method: Method, loss: &mut SeesawLoss, x: &Tensor, y: &Tensor) -> Result<()> {
    match method {
        Method::NodeStep | Method::ReferenceStep => {
            let leaf = x.detach().set_requires_grad(true);
            loss.forward(&leaf, y, None, None)?.total().f_backward()?;
        }
        Method::ForwardBackward => {
            let _ = loss.forward_backward(x, y, None, None)?;
        }
        Method::CrossEntropyStep => {
            let leaf = x.detach().set_requires_grad(true);
            leaf.to_kind(Kind::Float).cross_entropy_for_logits(y).f_backward()?;
        }
    }
    Ok(())
}

/// Whether a step makes the host wait for the GPU: queue ~100 ms of GPU work,
/// then time the host side of one step. A step that returns long before the
/// queued work ends did not synchronize.
fn host_waits(device: Device, step: &mut dyn FnMut() -> Result<()>) -> Result<(bool, f64)> {
    let a = Tensor::randn([8192, 8192], (Kind::Float, device));
    let sync = || tch::Cuda::synchronize(0);
    sync();
    let mut b = a.shallow_clone();
    for _ in 0..8 {
        b = b.matmul(&a);
    }
    let t1 = Instant::now();
    step()?;
    let step_host_ms = t1.elapsed().as_secs_f64() * 1e3;
    let t2 = Instant::now();
    sync();
    let drain_ms = t2.elapsed().as_secs_f64() * 1e3;
    drop(b);
    // The step waited if the GPU had nothing left to do when it returned.
    Ok((drain_ms < 1.0, step_host_ms))
}

fn benchmark(device: Device, timer: &Timer) -> Result<()> {
    let bandwidth = copy_bandwidth(timer, device)?;
    println!("copy bandwidth: {:.0} GB/s (read + write)\n", bandwidth / 1e9);
    println!(
        "{:<12} {:>6} {:>5} {:<26} {:>10} {:>9} {:>9} {:>8}",
        "shape", "N", "dtype", "method", "median ms", "GB/s", "% floor", "vs ref"
    );
    for shape in SHAPES.iter().chain(GPU_SHAPES) {
        for (kind, kind_name, elem) in [(Kind::Float, "f32", 4.0), (Kind::BFloat16, "bf16", 2.0)] {
            let inputs = shape.inputs(ROTATE, kind, device);
            let floor_bytes = 2.0 * (shape.rows * shape.width()) as f64 * elem;
            let floor_ms = floor_bytes / bandwidth * 1e3;
            let mut results = Vec::new();
            for (method, name, checks) in METHODS {
                let vs = nn::VarStore::new(device);
                let backend = if method == Method::ReferenceStep {
                    Backend::Reference
                } else {
                    Backend::Fused
                };
                let config = shape.config(backend).checks(checks);
                let mut loss = SeesawLoss::new(vs.root(), config)?;
                let ms = timer.median_ms(|i| {
                    let (x, y) = &inputs[i % ROTATE];
                    run_method(method, &mut loss, x, y)
                })?;
                results.push((method, name, ms));
            }
            let reference_ms = results
                .iter()
                .find(|r| r.0 == Method::ReferenceStep)
                .map_or(f64::NAN, |r| r.2);
            for (method, name, ms) in &results {
                let fused = matches!(method, Method::NodeStep | Method::ForwardBackward);
                println!(
                    "{:<12} {:>6} {:>5} {:<26} {:>10.4} {:>9.0} {:>9} {:>8}",
                    shape.name,
                    shape.rows,
                    kind_name,
                    name,
                    ms,
                    floor_bytes / (ms * 1e-3) / 1e9,
                    if fused {
                        format!("{:.0}%", 100.0 * floor_ms / ms)
                    } else {
                        "-".into()
                    },
                    if fused {
                        format!("{:.1}x", reference_ms / ms)
                    } else {
                        "-".into()
                    },
                );
            }
        }
    }

    let shape = common::lvis_8192();
    let inputs = shape.inputs(ROTATE, Kind::Float, device);
    println!();
    for checks in [Checks::Deferred, Checks::Immediate] {
        let vs = nn::VarStore::new(device);
        let config = shape.config(Backend::Fused).checks(checks);
        let mut loss = SeesawLoss::new(vs.root(), config)?;
        // Compiles the kernels and warms the allocator before the check.
        run_method(Method::NodeStep, &mut loss, &inputs[0].0, &inputs[0].1)?;
        let (waited, host_ms) = host_waits(device, &mut || {
            run_method(Method::NodeStep, &mut loss, &inputs[0].0, &inputs[0].1)
        })?;
        print_step_counts(&mut || run_method(Method::NodeStep, &mut loss, &inputs[0].0, &inputs[0].1))?;
        println!(
            "host waits for the GPU during a fused step ({} N={}, {checks:?} checks): {} (host side of the step {host_ms:.3} ms)",
            shape.name,
            shape.rows,
            if waited { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// Crate kernel launches, libtorch launches and host reads of one step
/// (feature `testing`, which scripts/gpu-pack.sh builds with).
#[cfg(feature = "testing")]
fn print_step_counts(step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    use seesaw_loss::testing;
    let (launches, ops, reads) = (
        testing::kernel_launches(),
        testing::libtorch_ops(),
        testing::host_reads(),
    );
    step()?;
    println!(
        "one step: {} crate kernel launches, {} libtorch launches, {} host reads",
        testing::kernel_launches() - launches,
        testing::libtorch_ops().launches - ops.launches,
        testing::host_reads() - reads
    );
    Ok(())
}

#[cfg(not(feature = "testing"))]
fn print_step_counts(_step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    println!("(build with --features testing for launch and host-read counts)");
    Ok(())
}

/// Device memory held between forward and backward at the LVIS shape, for
/// the autograd node and for the surrogate formulation (value + (l - detach l)
/// with l = sum(z * G), G kept alive until backward).
fn memory(device: Device, ctx: &Arc<CudaContext>) -> Result<()> {
    let shape = common::lvis_8192();
    let used = || -> Result<i64> {
        tch::Cuda::synchronize(0);
        let (free, total) = ctx.mem_get_info()?;
        Ok((total - free) as i64)
    };
    println!(
        "device memory held between forward and backward, {} N={} C={} f32 (logits {:.1} MB)",
        shape.name,
        shape.rows,
        shape.classes,
        (shape.rows * shape.width() * 4) as f64 / 1e6
    );
    for surrogate in [false, true] {
        let vs = nn::VarStore::new(device);
        let mut loss = SeesawLoss::new(vs.root(), shape.config(Backend::Fused))?;
        let (x, y) = shape.inputs(1, Kind::Float, device).swap_remove(0);
        let x = x.set_requires_grad(true);
        let _ = loss.forward(&x, &y, None, None)?; // compile and warm up
        let before = used()?;
        let total = if surrogate {
            let (out, grad) = loss.forward_backward(&x.detach(), &y, None, None)?;
            let l = (&x * &grad).sum(Kind::Float);
            out.total() + (&l - l.detach())
        } else {
            loss.forward(&x, &y, None, None)?.total()
        };
        let held = used()? - before;
        total.f_backward()?;
        println!(
            "  {:<10} {:>8.1} MB",
            if surrogate { "surrogate" } else { "node" },
            held as f64 / 1e6
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    if !tch::Cuda::is_available() {
        println!("gpu benchmark: libtorch sees no CUDA device; nothing to measure");
        return Ok(());
    }
    let device = Device::Cuda(0);
    let ctx = CudaContext::new(0).context("opening CUDA device 0")?;
    let timer = Timer {
        stream: ctx.default_stream(),
    };
    println!(
        "seesaw-loss GPU benchmark, {} runs per median, {} rotating inputs",
        RUNS, ROTATE
    );
    if std::env::args().any(|a| a == "--memory") {
        memory(device, &ctx)
    } else {
        benchmark(device, &timer)
    }
}
