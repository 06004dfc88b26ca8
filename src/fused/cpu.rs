//! The CPU mirror of the kernel: the row algorithm of [`crate::math`] over
//! row blocks on scoped threads. It is the fast CPU path and lets CI check
//! the kernel's math without a GPU.

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::RowOutputs;
use crate::call::Call;
use crate::config::Head;
use crate::math::{class_row, objectness_row, RowParams};

/// Below this many logits one thread does the work: spawning costs more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// The call's constants for [`crate::math`].
pub(crate) fn row_params(call: &Call) -> RowParams {
    RowParams {
        p: call.p as f32,
        q: call.q as f32,
        log_eps: (call.eps as f32).ln(),
    }
}

/// Borrowed view of one call's host data.
struct HostCall<'a> {
    params: RowParams,
    logits: &'a [f32],
    labels: &'a [i64],
    weights: Option<&'a [f32]>,
    log_counts: &'a [f32],
    width: usize,
    classes: usize,
    detection: bool,
    loss_weight: f32,
}

pub(crate) fn rows(call: &Call) -> Result<RowOutputs> {
    ensure!(call.scores.device() == Device::Cpu, "the CPU mirror takes CPU tensors");
    let _guard = tch::no_grad_guard();
    let logits = call.scores.detach().to_kind(Kind::Float).contiguous();
    let labels = call.labels.contiguous();
    let weights = call.weights.as_ref().map(|w| w.to_kind(Kind::Float).contiguous());
    let log_counts = call.log_counts.to_kind(Kind::Float).contiguous();
    let shape = logits.size();
    let (n, width) = (shape[0] as usize, shape[1] as usize);
    let detection = call.head == Head::Detection;

    let class_loss = Tensor::zeros([n as i64], (Kind::Float, Device::Cpu));
    let objectness_loss = Tensor::zeros([if detection { n as i64 } else { 0 }], (Kind::Float, Device::Cpu));
    let grad = Tensor::empty([n as i64, width as i64], (Kind::Float, Device::Cpu));
    // SAFETY: each tensor above is a contiguous CPU tensor of the kind read,
    // kept alive until the end of this function, and its element count is
    // the length of the slice.
    let host = unsafe {
        HostCall {
            params: row_params(call),
            logits: slice(&logits, n * width),
            labels: slice(&labels, n),
            weights: weights.as_ref().map(|w| slice(w, n)),
            log_counts: slice(&log_counts, call.num_classes as usize),
            width,
            classes: call.num_classes as usize,
            detection,
            loss_weight: call.loss_weight as f32,
        }
    };
    // SAFETY: fresh contiguous f32 CPU tensors of these lengths, written only
    // through these slices while they live.
    unsafe {
        run_blocks(
            &host,
            slice_mut(&class_loss, n),
            slice_mut(&objectness_loss, if detection { n } else { 0 }),
            slice_mut(&grad, n * width),
        );
    }
    Ok(RowOutputs {
        class_loss: class_loss.to_kind(call.compute_kind),
        objectness_loss: detection.then(|| objectness_loss.to_kind(call.compute_kind)),
        grad: grad.to_kind(call.scores.kind()),
    })
}

/// # Safety
/// `t` must be a contiguous CPU tensor of `len` elements of type `T`.
unsafe fn slice<T>(t: &Tensor, len: usize) -> &[T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, len)
}

/// # Safety
/// `t` must be a contiguous CPU tensor of `len` elements of type `T` that
/// nothing else reads or writes while the slice lives.
#[allow(clippy::mut_from_ref)]
unsafe fn slice_mut<T>(t: &Tensor, len: usize) -> &mut [T] {
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, len)
}

/// Splits the rows into one block per thread.
fn run_blocks(host: &HostCall, class_loss: &mut [f32], objectness_loss: &mut [f32], grad: &mut [f32]) {
    let n = class_loss.len();
    let threads = if n * host.width < PARALLEL_MIN_ELEMENTS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |t| t.get()).min(n)
    };
    let rows_per_block = n.div_ceil(threads.max(1)).max(1);
    let obj_chunk = if host.detection { rows_per_block } else { 0 };
    let mut obj_blocks: Vec<&mut [f32]> = if host.detection {
        objectness_loss.chunks_mut(obj_chunk).collect()
    } else {
        Vec::new()
    };
    obj_blocks.resize_with(n.div_ceil(rows_per_block), Default::default);
    std::thread::scope(|scope| {
        let blocks = class_loss
            .chunks_mut(rows_per_block)
            .zip(grad.chunks_mut(rows_per_block * host.width))
            .zip(obj_blocks)
            .enumerate();
        for (b, ((cls, g), obj)) in blocks {
            let first = b * rows_per_block;
            if threads == 1 {
                run_rows(host, first, cls, obj, g);
            } else {
                scope.spawn(move || run_rows(host, first, cls, obj, g));
            }
        }
    });
}

/// The per-row work; the kernel's thread-block body does the same.
fn run_rows(host: &HostCall, first: usize, class_loss: &mut [f32], objectness_loss: &mut [f32], grad: &mut [f32]) {
    let c = host.classes;
    for (i, loss) in class_loss.iter_mut().enumerate() {
        let row = first + i;
        let z = &host.logits[row * host.width..(row + 1) * host.width];
        let g = &mut grad[i * host.width..(i + 1) * host.width];
        let label = host.labels[row];
        let scale = host.loss_weight * host.weights.map_or(1.0, |w| w[row]);
        let max_label = if host.detection { c as i64 } else { c as i64 - 1 };
        if !(0..=max_label).contains(&label) {
            // Labels are checked before any pass runs; this guard only keeps
            // an unchecked label from indexing out of bounds.
            *loss = f32::NAN;
            if host.detection {
                objectness_loss[i] = f32::NAN;
            }
            g.fill(0.0);
            continue;
        }
        let label = label as usize;
        let (g_cls, g_obj) = g.split_at_mut(c);
        *loss = if label < c {
            class_row(&host.params, &z[..c], label, host.log_counts, Some((g_cls, scale)))
        } else {
            g_cls.fill(0.0);
            0.0
        };
        if host.detection {
            objectness_loss[i] = objectness_row(z[c], z[c + 1], label == c, Some((g_obj, scale)));
        }
    }
}
