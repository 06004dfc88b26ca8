//! The CPU mirror of the kernel: the row algorithm of [`crate::math`] over
//! row blocks on scoped threads, in vector code (AVX2 when the processor has
//! it). It is the fast CPU path and lets CI check the kernel's math without a
//! GPU.

use std::ops::Range;

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::{LossRows, Upstream};
use crate::call::Call;
use crate::config::Head;
use crate::math::{class_forward, class_forward_powered, class_grad, objectness_row, PoweredCounts, RowStats};
use crate::params::SeesawParams;

/// The fewest logits a thread gets: below this, handing out work costs more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// A call's inputs as host slices, borrowed from an [`Inputs`].
struct Host<'a> {
    params: SeesawParams,
    logits: &'a [f32],
    labels: &'a [i64],
    weights: Option<&'a [f32]>,
    log_counts: &'a [f32],
    width: usize,
    classes: usize,
    detection: bool,
    loss_weight: f32,
}

/// Owned contiguous f32 / i64 copies of a call's inputs (no copy when they
/// already are).
struct Inputs {
    logits: Tensor,
    labels: Tensor,
    weights: Option<Tensor>,
    log_counts: Tensor,
}

impl Inputs {
    fn of(call: &Call) -> Result<Inputs> {
        ensure!(call.scores.device() == Device::Cpu, "the CPU mirror takes CPU tensors");
        Ok(Inputs {
            logits: call.scores.detach().to_kind(Kind::Float).contiguous(),
            labels: call.labels.contiguous(),
            weights: call.weights.as_ref().map(|w| w.to_kind(Kind::Float).contiguous()),
            log_counts: call.log_counts.to_kind(Kind::Float).contiguous(),
        })
    }

    fn host<'a>(&'a self, call: &Call) -> Host<'a> {
        let shape = self.logits.size();
        let (n, width) = (shape[0] as usize, shape[1] as usize);
        // SAFETY (all four slices): contiguous CPU tensors of these kinds and
        // lengths, alive as long as `self`.
        Host {
            params: call.params,
            logits: unsafe { slice(&self.logits, n * width) },
            labels: unsafe { slice(&self.labels, n) },
            weights: self.weights.as_ref().map(|w| unsafe { slice(w, n) }),
            log_counts: unsafe { slice(&self.log_counts, call.num_classes() as usize) },
            width,
            classes: call.num_classes() as usize,
            detection: call.head() == Head::Detection,
            loss_weight: call.params.loss_weight,
        }
    }
}

impl Host<'_> {
    fn rows(&self) -> usize {
        self.labels.len()
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.logits[r * self.width..(r + 1) * self.width]
    }

    /// The row's label when it is in range for the head. Labels are checked
    /// before any pass runs; this only keeps an unchecked one from indexing
    /// out of bounds.
    fn label(&self, r: usize) -> Option<usize> {
        let max = if self.detection { self.classes } else { self.classes - 1 };
        usize::try_from(self.labels[r]).ok().filter(|&l| l <= max)
    }

    fn scale(&self, r: usize) -> f32 {
        self.loss_weight * self.weights.map_or(1.0, |w| w[r])
    }
}

/// Per-row upstream multipliers on the host: `value[r * stride]`, stride 0
/// for one value shared by every row; `None` when the part is unused.
struct HostUpstream<'a> {
    classes: Option<(&'a [f32], usize)>,
    objectness: Option<(&'a [f32], usize)>,
}

impl<'a> HostUpstream<'a> {
    /// Views of multipliers already placed on the CPU ([`Upstream::on`]).
    fn of(placed: &'a Upstream) -> Self {
        // SAFETY: `Upstream::on` gives contiguous 1-D f32 tensors.
        let view = |t: &'a Option<Tensor>| {
            t.as_ref()
                .map(|t| (unsafe { slice(t, t.numel()) }, Upstream::stride(t)))
        };
        HostUpstream {
            classes: view(&placed.classes),
            objectness: view(&placed.objectness),
        }
    }

    fn at(part: Option<(&[f32], usize)>, r: usize) -> f32 {
        part.map_or(0.0, |(v, stride)| v[r * stride])
    }
}

/// Loss pass: unweighted losses and stats per row, no N x C output.
pub(crate) fn forward(call: &Call) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let out = LossRows::zeros(n as i64, host.detection, Device::Cpu);
    let stats = Tensor::zeros([n as i64, 2], (Kind::Float, Device::Cpu));
    // SAFETY: fresh contiguous f32 tensors of these lengths, written only
    // through these pointers, each row by one thread.
    let targets = unsafe { Targets::new(Some(&out), Some(&stats), None) };
    let powered = PoweredCounts::new(&host.params, host.log_counts);
    parallel_rows(n, host.width, |rows| {
        forward_block(&host, powered.as_ref(), rows, &targets)
    });
    Ok((out, stats))
}

/// Gradient pass: `grad[r] = upstream_r * scale_r * d loss_r / d z_r`.
pub(crate) fn backward(call: &Call, stats: &Tensor, upstream: &Upstream) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let stats = stats.to_kind(Kind::Float).contiguous();
    ensure!(
        stats.size() == [n as i64, 2],
        "saved row stats have shape {:?}, expected [{n}, 2]",
        stats.size()
    );
    let stats = StatsPtr(stats.data_ptr() as *const f32);
    let placed = upstream.on(Device::Cpu);
    let up = HostUpstream::of(&placed);
    let grad = Tensor::empty([n as i64, host.width as i64], (Kind::Float, Device::Cpu));
    // SAFETY: as in `forward`.
    let targets = unsafe { Targets::new(None, None, Some(&grad)) };
    parallel_rows(n, host.width, |rows| backward_block(&host, rows, &stats, &up, &targets));
    Ok(grad.to_kind(call.scores.kind()))
}

/// Both passes back to back on each row (the row is still in cache for the
/// second): losses, and the gradient scaled by `upstream`.
pub(crate) fn forward_backward(call: &Call, upstream: &Upstream) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let placed = upstream.on(Device::Cpu);
    let up = HostUpstream::of(&placed);
    let out = LossRows::zeros(n as i64, host.detection, Device::Cpu);
    let stats = Tensor::zeros([n as i64, 2], (Kind::Float, Device::Cpu));
    let grad = Tensor::empty([n as i64, host.width as i64], (Kind::Float, Device::Cpu));
    // SAFETY: as in `forward`.
    let targets = unsafe { Targets::new(Some(&out), Some(&stats), Some(&grad)) };
    let stats_in = StatsPtr(targets.stats);
    let powered = PoweredCounts::new(&host.params, host.log_counts);
    parallel_rows(n, host.width, |rows| {
        // Each thread reads back only the stats of its own rows.
        forward_block(&host, powered.as_ref(), rows.clone(), &targets);
        backward_block(&host, rows, &stats_in, &up, &targets)
    });
    Ok((out, grad.to_kind(call.scores.kind())))
}

/// Row stats, `[N, 2]` f32, read by row.
struct StatsPtr(*const f32);

// SAFETY: read at the rows of the reading thread only.
unsafe impl Sync for StatsPtr {}

/// Raw pointers to the outputs, shared by the threads: each writes only its
/// own rows.
struct Targets {
    class_loss: *mut f32,
    objectness_loss: *mut f32,
    stats: *mut f32,
    grad: *mut f32,
}

// SAFETY: the pointers are only written at disjoint rows (see `parallel_rows`).
unsafe impl Sync for Targets {}

impl Targets {
    /// # Safety
    /// Every tensor must be a contiguous f32 CPU tensor with the row count of
    /// the call, alive while the `Targets` is used.
    unsafe fn new(out: Option<&LossRows>, stats: Option<&Tensor>, grad: Option<&Tensor>) -> Targets {
        let p = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.data_ptr() as *mut f32);
        Targets {
            class_loss: p(out.map(|o| &o.class_loss)),
            objectness_loss: p(out.and_then(|o| o.objectness_loss.as_ref())),
            stats: p(stats),
            grad: p(grad),
        }
    }

    /// # Safety
    /// `r` is a row of the call, owned by the calling thread.
    #[allow(clippy::mut_from_ref)]
    unsafe fn grad_row(&self, r: usize, width: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.grad.add(r * width), width)
    }
}

extern "C" {
    fn seesaw_parallel_for(
        n: i64,
        grain: i64,
        f: unsafe extern "C" fn(*mut std::ffi::c_void, i64, i64),
        ctx: *mut std::ffi::c_void,
    );
}

/// Runs `work` over blocks of `0..n` on libtorch's intra-op thread pool
/// (`at::parallel_for`, through the shim): the threads that just ran the
/// model's matrix products, rather than new ones competing with them. Blocks
/// hold at least `PARALLEL_MIN_ELEMENTS` logits. A panic in `work` is caught
/// on the worker and raised again here, never unwinding through C++.
fn parallel_rows<W: Fn(Range<usize>) + Sync>(n: usize, width: usize, work: W) {
    if n == 0 {
        return;
    }
    struct Job<'a, F> {
        work: &'a F,
        panic: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    }
    unsafe extern "C" fn trampoline<F: Fn(Range<usize>) + Sync>(ctx: *mut std::ffi::c_void, begin: i64, end: i64) {
        // SAFETY: `ctx` is the `Job` below, alive for the whole parallel_for.
        let job = unsafe { &*(ctx as *const Job<F>) };
        let run = std::panic::AssertUnwindSafe(|| (job.work)(begin as usize..end as usize));
        if let Err(payload) = std::panic::catch_unwind(run) {
            if let Ok(mut slot) = job.panic.lock() {
                slot.get_or_insert(payload);
            }
        }
    }
    let job = Job {
        work: &work,
        panic: std::sync::Mutex::new(None),
    };
    let grain = PARALLEL_MIN_ELEMENTS.div_ceil(width.max(1)).max(1);
    // SAFETY: the trampoline matches the job's type and the job outlives the
    // call, which returns only when every chunk has run.
    unsafe {
        seesaw_parallel_for(
            n as i64,
            grain as i64,
            trampoline::<W>,
            &job as *const Job<W> as *mut std::ffi::c_void,
        )
    };
    if let Some(payload) = job.panic.into_inner().ok().flatten() {
        std::panic::resume_unwind(payload);
    }
}

/// Runs `$body` compiled for AVX2 when the processor has it, else as is: the
/// row loops are generic code that the compiler vectorizes for the features
/// of the function it is inlined into.
macro_rules! with_best_features {
    ($name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

// `powered`: the one-exponential loss pass's constants, when the call allows it.
with_best_features!(forward_block(
    host: &Host,
    powered: Option<&PoweredCounts>,
    rows: Range<usize>,
    targets: &Targets
) {
    let c = host.classes;
    let mut scratch = vec![0.0f32; if powered.is_some() { c } else { 0 }];
    for r in rows {
        let z = host.row(r);
        let (loss, stats, objectness) = match host.label(r) {
            None => (f32::NAN, RowStats::NAN, f32::NAN),
            Some(label) => {
                let (loss, stats) = if label < c {
                    match powered {
                        Some(powered) => class_forward_powered(&host.params, powered, &z[..c], label, &mut scratch),
                        None => class_forward(&host.params, &z[..c], label, host.log_counts),
                    }
                } else {
                    (0.0, RowStats::NAN)
                };
                let objectness = if host.detection { objectness_row(z[c], z[c + 1], label == c, None) } else { 0.0 };
                (loss, stats, objectness)
            }
        };
        // SAFETY: row r belongs to this thread; the pointers are valid for
        // the call's rows (`Targets::new`).
        unsafe {
            *targets.class_loss.add(r) = loss;
            if host.detection {
                *targets.objectness_loss.add(r) = objectness;
            }
            if !targets.stats.is_null() {
                *targets.stats.add(2 * r) = stats.lse;
                *targets.stats.add(2 * r + 1) = stats.lse_adjusted;
            }
        }
    }
});

with_best_features!(backward_block(
    host: &Host,
    rows: Range<usize>,
    stats: &StatsPtr,
    up: &HostUpstream,
    targets: &Targets
) {
    let c = host.classes;
    for r in rows {
        let z = host.row(r);
        // SAFETY: row r belongs to this thread.
        let g = unsafe { targets.grad_row(r, host.width) };
        let Some(label) = host.label(r) else {
            g.fill(0.0);
            continue;
        };
        let scale = host.scale(r);
        let (g_cls, g_obj) = g.split_at_mut(c);
        // SAFETY: row r of the [N, 2] stats, written before this read.
        let row_stats = unsafe { RowStats { lse: *stats.0.add(2 * r), lse_adjusted: *stats.0.add(2 * r + 1) } };
        let class_scale = scale * HostUpstream::at(up.classes, r);
        if label < c {
            class_grad(&host.params, &z[..c], label, host.log_counts, row_stats, class_scale, g_cls);
        } else {
            g_cls.fill(0.0);
        }
        if host.detection {
            let obj_scale = scale * HostUpstream::at(up.objectness, r);
            objectness_row(z[c], z[c + 1], label == c, Some((g_obj, obj_scale)));
        }
    }
});

/// # Safety
/// `t` must be a contiguous CPU tensor of `len` elements of type `T`.
unsafe fn slice<T>(t: &Tensor, len: usize) -> &[T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, len)
}
