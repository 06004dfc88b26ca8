//! The CPU mirror of the kernels: the same call in the same steps, the row
//! algorithm of [`crate::math`] over row blocks on libtorch's intra-op
//! threads, in vector code (`pulp`: AVX-512, AVX2 with FMA, SSE or NEON, the
//! widest the processor has). It is the fast
//! CPU path and lets CI check the kernels' logic without a GPU.
//!
//! - [`prepare`] is `seesaw_prepare`: it checks the batch, counts it, writes
//!   the log-count table and the call state, with no libtorch operation.
//! - The row passes write each row's `loss_weight * weight * loss`; a
//!   reduction sums them in row order in f64, so results are the same bits
//!   whatever the number of threads (each row's values depend on that row
//!   alone, and the sum's order is fixed).

use std::ops::Range;

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::{as_contiguous, LossRows, RowTensors, Upstream};
use crate::call::Call;
use crate::config::{Head, Reduction};
use crate::deferred::{BadBatch, Problem};
use crate::math::{
    class_forward, class_forward_powered, class_grad, dispatch, log_counts, prefetch_row, Ahead, Ends, LineAligned,
    Lines, Objectness, PoweredCounts, PoweredRow, RowEnd, RowStats, GROUP,
};
use crate::params::{SeesawParams, ROW_STATS, STATE_BAD, STATE_LEN, STATE_POSITIVE};

/// The fewest logits a thread gets: below this, handing out work costs more.
/// 8192 logits are about 3 us of a row pass, well above what waking
/// libtorch's pool costs: at LVIS's 16-row step (19,280 logits) two threads
/// take the step from 31.6 us to 25.7 us on a 2-core machine
/// (benches/RESULTS.md); 32768 left that step on one thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 13;

/// `seesaw_prepare` on the host: checks the labels, weights and counts;
/// when all are good, adds the labels to `counts` (or to `histogram`, int64
/// zeros shaped like it, when given). Returns the `[C]` f32 log-count table
/// of `counts`, the `[STATE_LEN]` int64 call state and, for a bad batch
/// (nothing counted), its first problem.
pub(crate) fn prepare(
    params: &SeesawParams,
    labels: &Tensor,
    weights: Option<&Tensor>,
    counts: &Tensor,
    histogram: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Option<BadBatch>)> {
    for t in [Some(counts), histogram].into_iter().flatten() {
        ensure!(
            t.kind() == Kind::Int64 && t.is_contiguous() && t.device() == Device::Cpu && t.numel() == counts.numel(),
            "cum_samples and the histogram must be contiguous int64 CPU tensors of one length here"
        );
    }
    let labels = as_contiguous(labels, Kind::Int64)?;
    let weights = weights.map(|w| as_contiguous(w, Kind::Float)).transpose()?;
    let n = labels.numel();
    let classes = params.classes as usize;
    let max_label = if params.detection != 0 {
        classes as i64
    } else {
        classes as i64 - 1
    };
    // SAFETY: contiguous CPU tensors of these kinds and lengths.
    let (label_values, weight_values, count_values) = unsafe {
        (
            slice::<i64>(&labels, n),
            weights.as_ref().map(|w| slice::<f32>(w, n)),
            std::slice::from_raw_parts_mut(counts.data_ptr() as *mut i64, counts.numel()),
        )
    };
    let bad_row = (0..n).find_map(|r| {
        let label = label_values[r];
        if !(0..=max_label).contains(&label) {
            return Some(BadBatch {
                problem: Problem::Label,
                row: r as i64,
                value: label,
            });
        }
        let weight = weight_values.map_or(1.0, |w| w[r]);
        (!weight.is_finite()).then_some(BadBatch {
            problem: Problem::Weight,
            row: r as i64,
            value: weight.to_bits() as i64,
        })
    });
    let bad = bad_row.or_else(|| {
        // Negative, or close enough to int64's limit that this batch could
        // overflow it (as `seesaw_prepare` checks).
        let limit = i64::MAX - n as i64;
        count_values.iter().position(|&c| c < 0 || c > limit).map(|j| BadBatch {
            problem: Problem::Count,
            row: j as i64,
            value: count_values[j],
        })
    });
    let positive = label_values
        .iter()
        .filter(|&&l| (0..classes as i64).contains(&l))
        .count() as i64;
    if bad.is_none() {
        // SAFETY: a contiguous int64 CPU tensor of the counts' length, checked above.
        let target = match histogram {
            Some(h) => unsafe { std::slice::from_raw_parts_mut(h.data_ptr() as *mut i64, h.numel()) },
            None => &mut *count_values,
        };
        for &label in label_values {
            let counter = &mut target[label as usize];
            *counter += 1; // cannot overflow: every counter is at most i64::MAX - n
        }
    }
    let log_counts = log_count_table(&count_values[..classes])?;
    let mut state = [0i64; STATE_LEN as usize];
    state[STATE_BAD as usize] = bad.is_some() as i64;
    state[STATE_POSITIVE as usize] = positive;
    Ok((log_counts, host_tensor(state.into_iter())?, bad))
}

/// `ln(max(n, 1))` of each count, in f32, as `seesaw_prepare` computes it
/// (to within a rounding: both `ln`s are within one of the exact value), in
/// vector code: all C at once cost less than finding the few that changed.
fn log_count_table(counts: &[i64]) -> Result<Tensor> {
    struct Table<'a>(&'a [f32], &'a mut [f32]);
    impl pulp::WithSimd for Table<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) {
            log_counts(simd, self.0, self.1)
        }
    }
    let values: Vec<f32> = counts.iter().map(|&n| n.max(1) as f32).collect();
    let table = Tensor::f_empty([counts.len() as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: a fresh contiguous f32 tensor of `counts.len()` values, not
    // shared yet.
    let out = unsafe { std::slice::from_raw_parts_mut(table.data_ptr() as *mut f32, counts.len()) };
    dispatch(Table(&values, out));
    Ok(table)
}

/// A 1-D CPU tensor of `values`, written in place: `Tensor::from_slice`
/// would fill it with zeros first (two more libtorch operations).
fn host_tensor<T: tch::kind::Element + Copy>(values: impl ExactSizeIterator<Item = T>) -> Result<Tensor> {
    let t = Tensor::f_empty([values.len() as i64], (T::KIND, Device::Cpu))?;
    let data = t.data_ptr() as *mut T;
    for (i, v) in values.enumerate() {
        // SAFETY: a fresh contiguous tensor of `values.len()` elements of T.
        unsafe { data.add(i).write(v) };
    }
    Ok(t)
}

/// A 0-dim f32 CPU tensor, written in place.
fn host_scalar(v: f32) -> Result<Tensor> {
    let t = Tensor::f_empty([], (Kind::Float, Device::Cpu))?;
    // SAFETY: a fresh tensor of one f32.
    unsafe { (t.data_ptr() as *mut f32).write(v) };
    Ok(t)
}

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
    /// The batch is bad: every row's loss is NaN, its gradient zero.
    bad: bool,
    /// What each part's mean divides by (1 for the other reductions).
    divisors: (f32, f32),
}

/// Owned contiguous f32 / i64 copies of a call's inputs (no copy when they
/// already are).
struct Inputs {
    logits: Tensor,
    labels: Tensor,
    weights: Option<Tensor>,
    log_counts: Tensor,
    state: [i64; STATE_LEN as usize],
}

impl Inputs {
    fn of(call: &Call) -> Result<Inputs> {
        ensure!(call.scores.device() == Device::Cpu, "the CPU mirror takes CPU tensors");
        let state = call
            .state
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the CPU mirror needs the call state of its prepare step"))?;
        let state = as_contiguous(state, Kind::Int64)?;
        ensure!(
            state.numel() == STATE_LEN as usize,
            "the call state has the wrong length"
        );
        // SAFETY: a contiguous int64 CPU tensor of STATE_LEN values.
        let state: [i64; STATE_LEN as usize] = unsafe { slice::<i64>(&state, STATE_LEN as usize) }
            .try_into()
            .map_err(|_| anyhow::anyhow!("the call state has the wrong length"))?;
        let RowTensors {
            labels,
            weights,
            log_counts,
        } = RowTensors::of(call)?;
        // The passes only read the logits: no need to detach them.
        Ok(Inputs {
            logits: as_contiguous(&call.scores, Kind::Float)?,
            labels,
            weights,
            log_counts,
            state,
        })
    }

    fn host<'a>(&'a self, call: &Call) -> Host<'a> {
        let shape = self.logits.size();
        let (n, width) = (shape[0] as usize, shape[1] as usize);
        let params = call.params;
        let positive = self.state[STATE_POSITIVE as usize];
        // SAFETY (all four slices): contiguous CPU tensors of these kinds and
        // lengths, alive as long as `self`.
        Host {
            params,
            logits: unsafe { slice(&self.logits, n * width) },
            labels: unsafe { slice(&self.labels, n) },
            weights: self.weights.as_ref().map(|w| unsafe { slice(w, n) }),
            log_counts: unsafe { slice(&self.log_counts, call.num_classes() as usize) },
            width,
            classes: call.num_classes() as usize,
            detection: call.head() == Head::Detection,
            bad: self.state[STATE_BAD as usize] != 0,
            divisors: mean_divisors(&params, n as i64, positive),
        }
    }
}

/// What each part's mean divides by, as `seesaw.cu`'s `divisor`: the
/// avg_factor plus f32 epsilon when given, else the part's rows (positive
/// rows for a detection head's classes), at least 1; 1 when not a mean.
fn mean_divisors(params: &SeesawParams, rows: i64, positive: i64) -> (f32, f32) {
    if params.reduction() != Reduction::Mean {
        return (1.0, 1.0);
    }
    let class_rows = if params.detection != 0 { positive } else { rows };
    let divisor = |rows| crate::reference::mean_divisor(rows, params.avg_factor()) as f32;
    (divisor(class_rows), divisor(rows))
}

impl Host<'_> {
    fn rows(&self) -> usize {
        self.labels.len()
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.logits[r * self.width..(r + 1) * self.width]
    }

    /// What a row pass over row `r` of a block ending at `end` asks the
    /// cache for ([`Ahead`]): the logits row `logits_ahead` on, and, where
    /// the pass writes a gradient, the row `GRAD_ROWS_AHEAD` on in `grad`.
    #[inline(always)]
    fn ahead(&self, r: usize, end: usize, logits_ahead: usize, grad: Option<&Targets>) -> Ahead {
        let logits_row = r + logits_ahead;
        let read = if logits_row < end { self.row(logits_row) } else { &[] };
        let grad_row = r + GRAD_ROWS_AHEAD;
        let write = match grad {
            // Row `grad_row` is in the block, so in the gradient.
            Some(targets) if grad_row < end => Lines::at(targets.grad.wrapping_add(grad_row * self.width), self.width),
            _ => Lines::NONE,
        };
        Ahead {
            read: Lines::of(read),
            write,
        }
    }

    /// The row's label when the batch is good and the label in range for
    /// the head. Labels are checked before any pass runs; this only keeps a
    /// bad one from indexing out of bounds.
    fn label(&self, r: usize) -> Option<usize> {
        if self.bad {
            return None;
        }
        let max = if self.detection { self.classes } else { self.classes - 1 };
        usize::try_from(self.labels[r]).ok().filter(|&l| l <= max)
    }

    fn scale(&self, r: usize) -> f32 {
        self.params.loss_weight * self.weights.map_or(1.0, |w| w[r])
    }

    /// Row `r`'s gradient multipliers, for its class part and its objectness
    /// pair: its scale times the part's upstream gradient over the part's
    /// mean divisor.
    fn grad_scales(&self, up: &HostUpstream, r: usize) -> (f32, f32) {
        let scale = self.scale(r);
        (
            scale * (HostUpstream::at(up.classes, r) / self.divisors.0),
            scale * (HostUpstream::at(up.objectness, r) / self.divisors.1),
        )
    }

    /// The call's `n^p` table when its exponents allow the powered loss
    /// pass (`math`'s documentation); computed once per call, before the
    /// rows are handed out.
    fn powered_counts(&self) -> Option<PoweredCounts> {
        struct Table<'a>(&'a SeesawParams, &'a [f32]);
        impl pulp::WithSimd for Table<'_> {
            type Output = Option<PoweredCounts>;
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
                PoweredCounts::new(simd, self.0, self.1)
            }
        }
        dispatch(Table(&self.params, self.log_counts))
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

/// The outputs of a loss pass: per row for [`Reduction::None`], else the
/// reduced scalars, f32.
fn reduced(host: &Host, rows: LossRows) -> Result<(Tensor, Option<Tensor>)> {
    if host.params.reduction() == Reduction::None {
        return Ok((rows.class_loss, rows.objectness_loss));
    }
    // SAFETY: fresh contiguous f32 tensors of `rows()` values.
    let sum = |t: &Tensor, divisor: f32| {
        let values = unsafe { slice::<f32>(t, host.rows()) };
        host_scalar((sum_f64(values) as f32) / divisor)
    };
    let classes = sum(&rows.class_loss, host.divisors.0)?;
    let objectness = rows
        .objectness_loss
        .as_ref()
        .map(|o| sum(o, host.divisors.1))
        .transpose()?;
    Ok((classes, objectness))
}

/// `sum(values)` in f64, in a fixed order whatever the number of threads:
/// value `i` goes to partial sum `i % 8`, and the eight are added pairwise.
/// Independent partial sums, so that the additions overlap; one running sum
/// waited on each of a batch's row losses in turn.
fn sum_f64(values: &[f32]) -> f64 {
    const PARTS: usize = 8;
    let mut parts = [0.0f64; PARTS];
    let (chunks, rest) = values.as_chunks::<PARTS>();
    for chunk in chunks {
        for (part, &v) in parts.iter_mut().zip(chunk) {
            *part += v as f64;
        }
    }
    for (part, &v) in parts.iter_mut().zip(rest) {
        *part += v as f64;
    }
    let [a, b, c, d, e, f, g, h] = parts;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

/// Loss pass: the reduced parts (per row for [`Reduction::None`]) and the
/// `[N, ROW_STATS]` row stats its gradient pass needs; no N x C output.
pub(crate) fn forward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let out = LossRows::empty(n as i64, host.detection, Device::Cpu)?;
    let stats = Tensor::f_empty([n as i64, ROW_STATS as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: fresh contiguous f32 tensors of these lengths, written only
    // through these pointers, each row by one thread.
    let targets = unsafe { Targets::new(Some(&out), Some(&stats), None) };
    let powered = host.powered_counts();
    parallel_rows(n, host.width, |rows| {
        dispatch(ForwardBlock {
            powered: powered.as_ref(),
            rows,
            out: Outputs {
                host: &host,
                targets: &targets,
                grad: None,
            },
        })
    });
    let (classes, objectness) = reduced(&host, out)?;
    Ok((classes, objectness, stats))
}

/// Gradient pass: `grad[r] = upstream_r / divisor * scale_r * d loss_r / d z_r`.
pub(crate) fn backward(call: &Call, stats: &Tensor, upstream: &Upstream) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let stats = as_contiguous(stats, Kind::Float)?;
    ensure!(
        stats.size() == [n as i64, ROW_STATS as i64],
        "saved row stats have shape {:?}, expected [{n}, {ROW_STATS}]",
        stats.size()
    );
    let stats = StatsPtr(stats.data_ptr() as *const f32);
    let placed = upstream.on(Device::Cpu)?;
    let up = HostUpstream::of(&placed);
    let grad = Tensor::f_empty([n as i64, host.width as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: as in `forward`.
    let targets = unsafe { Targets::new(None, None, Some(&grad)) };
    parallel_rows(n, host.width, |rows| {
        dispatch(BackwardBlock {
            rows,
            stats: &stats,
            out: Outputs {
                host: &host,
                targets: &targets,
                grad: Some(&up),
            },
        })
    });
    as_contiguous(&grad, call.scores.kind())
}

/// The loss pass with each row's gradient written while the row is in
/// cache (from the loss pass's own terms where the powered pass runs, so one
/// exponential per logit): the reduced parts, and the gradient of their
/// total.
pub(crate) fn forward_backward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let _guard = tch::no_grad_guard();
    let inputs = Inputs::of(call)?;
    let host = inputs.host(call);
    let n = host.rows();
    let one = host_scalar(1.0)?;
    let placed = Upstream {
        classes: Some(one.shallow_clone()),
        objectness: host.detection.then_some(one),
    };
    let up = HostUpstream::of(&placed);
    let out = LossRows::empty(n as i64, host.detection, Device::Cpu)?;
    let grad = Tensor::f_empty([n as i64, host.width as i64], (Kind::Float, Device::Cpu))?;
    // SAFETY: as in `forward`. No row stats: each row's gradient is written
    // in its loss pass, so nothing reads them.
    let targets = unsafe { Targets::new(Some(&out), None, Some(&grad)) };
    let powered = host.powered_counts();
    parallel_rows(n, host.width, |rows| {
        dispatch(ForwardBlock {
            powered: powered.as_ref(),
            rows,
            out: Outputs {
                host: &host,
                targets: &targets,
                grad: Some(&up),
            },
        })
    });
    let (classes, objectness) = reduced(&host, out)?;
    Ok((classes, objectness, as_contiguous(&grad, call.scores.kind())?))
}

/// Row stats, `[N, ROW_STATS]` f32 (`RowStats`), read by row.
struct StatsPtr(*const f32);

// SAFETY: read at the rows of the reading thread only.
unsafe impl Sync for StatsPtr {}

/// How many rows ahead a gradient row is asked for with a write hint:
/// the gradient pass reads the logits one row ahead, and a store must find
/// its line owned, so the request goes out earlier (two rows measured a
/// little faster than one, four no better; benches/RESULTS.md).
const GRAD_ROWS_AHEAD: usize = 2;

/// How many rows ahead the loss pass asks for a logits row. Its row's
/// arithmetic, about 700 cycles, is shorter than the time the lines asked
/// for one row ahead take to arrive, so it waited on them; two rows ahead
/// measured 7-8% faster, three and four no better (benches/RESULTS.md).
/// Its first rows come from the processor's own prefetcher.
const LOSS_LOGITS_AHEAD: usize = 2;

/// How many rows ahead the gradient pass asks for a logits row: it waits on
/// its stores, and asking further ahead measured no faster.
const GRAD_LOGITS_AHEAD: usize = 1;

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

    /// Writes row `r`'s loss parts and, where they are kept, its stats
    /// (the objectness part where the head has one).
    ///
    /// # Safety
    /// `r` is a row of the call, owned by the calling thread, and the
    /// targets have class losses.
    unsafe fn write_row(&self, r: usize, class_loss: f32, objectness: f32, stats: RowStats) {
        *self.class_loss.add(r) = class_loss;
        if !self.objectness_loss.is_null() {
            *self.objectness_loss.add(r) = objectness;
        }
        if !self.stats.is_null() {
            let row = self.stats.add(ROW_STATS as usize * r);
            for (k, v) in stats.to_array().into_iter().enumerate() {
                *row.add(k) = v;
            }
        }
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

thread_local! {
    /// The powered loss pass's row of `exp(z_j - shift)`, kept per thread so
    /// that a call allocates (and zeroes) nothing for it.
    static SCRATCH: std::cell::RefCell<LineAligned> = const { std::cell::RefCell::new(LineAligned::new()) };
}

/// A row's class part, as its end needs it.
#[derive(Clone, Copy)]
enum ClassPart {
    /// No class loss (a background row of a detection head): 0, NaN stats,
    /// a zero class gradient written by the pass.
    None,
    /// Loss and stats known before the end (the general loss pass, or the
    /// gradient pass's saved stats).
    Known(f32, RowStats),
    /// The powered loss pass's, finished from the end.
    Powered(PoweredRow),
}

/// A row whose passes are done, waiting for its end ([`Ends`]).
#[derive(Clone, Copy)]
struct Pending {
    r: usize,
    label: usize,
    class: ClassPart,
    pair: Option<Objectness>,
}

impl Pending {
    const NONE: Pending = Pending {
        r: 0,
        label: 0,
        class: ClassPart::None,
        pair: None,
    };

    /// Row `r` with its label and class part; its pair is added by
    /// [`Waiting::push_row`].
    fn of(r: usize, label: usize, class: ClassPart) -> Pending {
        Pending {
            r,
            label,
            class,
            pair: None,
        }
    }
}

/// A block's rows waiting for their ends, and the ends.
struct Waiting {
    ends: Ends,
    rows: [Pending; GROUP],
}

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            ends: Ends::new(),
            rows: [Pending::NONE; GROUP],
        }
    }

    /// Adds row `z` (`row.r`), with its objectness pair where the head has
    /// one; a full group is ended at once.
    #[inline(always)]
    fn push_row<S: pulp::Simd>(&mut self, simd: S, out: &Outputs, z: &[f32], mut row: Pending, mut end: RowEnd) {
        let c = out.host.classes;
        if out.host.detection {
            let pair = Objectness::new(z[c], z[c + 1], row.label == c);
            end.margin = pair.margin();
            row.pair = Some(pair);
        }
        self.rows[self.ends.len()] = row;
        self.ends.push(end);
        if self.ends.is_full() {
            self.end(simd, out);
        }
    }

    /// Ends the rows gathered and writes what they still owe: the losses
    /// and stats of a loss pass, the label's and the objectness pair's
    /// gradient where one is written.
    #[inline(always)]
    fn end<S: pulp::Simd>(&mut self, simd: S, out: &Outputs) {
        let Outputs { host, targets, grad } = *out;
        self.ends.run(simd);
        let c = host.classes;
        for (i, row) in self.rows[..self.ends.len()].iter().enumerate() {
            let ended = self.ends.ended(i);
            let (loss, stats) = match row.class {
                ClassPart::None => (0.0, RowStats::NAN),
                ClassPart::Known(loss, stats) => (loss, stats),
                ClassPart::Powered(powered) => powered.finish(&ended),
            };
            if let Some(up) = grad {
                let (class_scale, pair_scale) = host.grad_scales(up, row.r);
                // SAFETY: row r belongs to this thread.
                let g = unsafe { targets.grad_row(row.r, host.width) };
                if !matches!(row.class, ClassPart::None) {
                    g[row.label] = class_scale * ended.label_grad;
                }
                if let Some(pair) = row.pair {
                    pair.write_grad(&ended, &mut g[c..], pair_scale);
                }
            }
            if !targets.class_loss.is_null() {
                let scale = host.scale(row.r);
                let objectness = row.pair.map_or(0.0, |pair| pair.loss(&ended));
                // SAFETY: row r belongs to this thread; the pointers are
                // valid for the call's rows (`Targets::new`).
                unsafe { targets.write_row(row.r, scale * loss, scale * objectness, stats) };
            }
        }
        self.ends.clear();
    }
}

/// Where a block's rows go: the call's inputs, its outputs, and the upstream
/// multipliers of the gradient when one is written.
#[derive(Clone, Copy)]
struct Outputs<'a> {
    host: &'a Host<'a>,
    targets: &'a Targets,
    grad: Option<&'a HostUpstream<'a>>,
}

/// The loss pass over a block of rows, compiled for the instruction set
/// `dispatch` picks; with `grad`, each row's gradient too, while the row is
/// in cache.
struct ForwardBlock<'a> {
    /// The powered table, when the call allows the powered passes.
    powered: Option<&'a PoweredCounts>,
    rows: Range<usize>,
    out: Outputs<'a>,
}

impl pulp::WithSimd for ForwardBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let ForwardBlock { powered, rows, out } = self;
        let Outputs { host, targets, grad } = out;
        let c = host.classes;
        // Taken out of the thread's slot and put back: the row loop must not
        // run inside a closure, which would not get this function's features.
        let mut scratch = SCRATCH.with(|s| s.take());
        if powered.is_some() {
            scratch.grow_to(c);
        }
        let mut waiting = Waiting::new();
        let end = rows.end;
        for r in rows {
            let z = host.row(r);
            let ahead = host.ahead(r, end, LOSS_LOGITS_AHEAD, grad.is_some().then_some(targets));
            // SAFETY: row r belongs to this thread.
            let mut g = grad.map(|up| (unsafe { targets.grad_row(r, host.width) }, up));
            let Some(label) = host.label(r) else {
                prefetch_row(ahead);
                if let Some((g, _)) = g {
                    g.fill(0.0);
                }
                // SAFETY: as in `Waiting::end`.
                unsafe { targets.write_row(r, f32::NAN, f32::NAN, RowStats::NAN) };
                continue;
            };
            let (class, row_end) = if label < c {
                let class_part = g.as_mut().map(|(g, up)| (&mut g[..c], host.grad_scales(up, r).0));
                match powered {
                    Some(powered) => {
                        let row = class_forward_powered(
                            simd,
                            powered,
                            &z[..c],
                            label,
                            scratch.as_mut_slice(),
                            class_part,
                            ahead,
                        );
                        (ClassPart::Powered(row), row.end)
                    }
                    None => {
                        let params = &host.params;
                        let (loss, stats) = class_forward(simd, params, &z[..c], label, host.log_counts, ahead);
                        if let Some((g_cls, class_scale)) = class_part {
                            let counts = host.log_counts;
                            class_grad(
                                simd,
                                params,
                                &z[..c],
                                label,
                                counts,
                                stats,
                                class_scale,
                                g_cls,
                                Ahead::NONE,
                            );
                        }
                        (ClassPart::Known(loss, stats), RowEnd::of_loss(stats.loss(z[label])))
                    }
                }
            } else {
                prefetch_row(ahead);
                if let Some((g, _)) = g.as_mut() {
                    g[..c].fill(0.0);
                }
                (ClassPart::None, RowEnd::NONE)
            };
            waiting.push_row(simd, &out, z, Pending::of(r, label, class), row_end);
        }
        waiting.end(simd, &out);
        SCRATCH.with(|s| s.replace(scratch));
    }
}

/// The gradient pass over a block of rows, compiled for the instruction set
/// `dispatch` picks.
struct BackwardBlock<'a> {
    rows: Range<usize>,
    stats: &'a StatsPtr,
    out: Outputs<'a>,
}

impl pulp::WithSimd for BackwardBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let BackwardBlock { rows, stats, out } = self;
        let Outputs { host, targets, grad } = out;
        let c = host.classes;
        let mut waiting = Waiting::new();
        let end = rows.end;
        for r in rows {
            let z = host.row(r);
            let ahead = host.ahead(r, end, GRAD_LOGITS_AHEAD, Some(targets));
            // SAFETY: row r belongs to this thread.
            let g = unsafe { targets.grad_row(r, host.width) };
            let Some(label) = host.label(r) else {
                prefetch_row(ahead);
                g.fill(0.0);
                continue;
            };
            let (class, row_end) = if label < c {
                // SAFETY: row r of the [N, ROW_STATS] stats, written before this read.
                let row_stats = RowStats::from_array(unsafe { *(stats.0.add(ROW_STATS as usize * r) as *const _) });
                let class_scale = grad.map_or(1.0, |up| host.grad_scales(up, r).0);
                class_grad(
                    simd,
                    &host.params,
                    &z[..c],
                    label,
                    host.log_counts,
                    row_stats,
                    class_scale,
                    &mut g[..c],
                    ahead,
                );
                let loss = row_stats.loss(z[label]);
                (ClassPart::Known(loss, row_stats), RowEnd::of_loss(loss))
            } else {
                prefetch_row(ahead);
                g[..c].fill(0.0);
                (ClassPart::None, RowEnd::NONE)
            };
            waiting.push_row(simd, &out, z, Pending::of(r, label, class), row_end);
        }
        waiting.end(simd, &out);
    }
}

/// # Safety
/// `t` must be a contiguous CPU tensor of `len` elements of type `T`.
unsafe fn slice<T>(t: &Tensor, len: usize) -> &[T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is `ln(max(n, 1))` to within one f32 rounding of the exact
    /// value, for counts a run meets (0 and 1 give 0) and counts past f32's
    /// exact integers.
    #[test]
    fn log_count_table_is_ln_of_the_counts() {
        let counts: Vec<i64> = [-3, 0, 1, 2, 3, 7, 1000, 123_456_789, 1 << 40, i64::MAX]
            .into_iter()
            .chain((0..2000).map(|i| i * i * 37 + i))
            .collect();
        let table = log_count_table(&counts).expect("a table");
        let values = Vec::<f32>::try_from(&table).expect("f32 values");
        assert_eq!(values.len(), counts.len());
        let at_least_one: Vec<f32> = counts.iter().map(|&n| n.max(1) as f32).collect();
        crate::math::within("log count", &at_least_one, &values, f64::ln, |_| 1.0);
    }

    /// Every value is added once, whatever the length's remainder over the
    /// eight partial sums (small integers, so the sums are exact).
    #[test]
    fn sum_f64_adds_every_value() {
        for len in 0..40usize {
            let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(
                sum_f64(&values),
                (len * len.saturating_sub(1) / 2) as f64,
                "length {len}"
            );
        }
    }
}
