//! The fused paths: the row algorithm of [`crate::math`] as a CUDA kernel
//! ([`cuda`]) or on CPU threads ([`cpu`]), in two shapes:
//!
//! - through the autograd node ([`crate::autograd`]): forward computes the
//!   losses and two statistics per row, backward recomputes the adjusted
//!   softmax and writes the gradient times the upstream gradient; nothing
//!   N x C lives between them;
//! - [`forward_backward`]: both passes at once, for callers that want the
//!   loss and the gradient without autograd.
//!
//! Weights, `loss_weight` and the reduction are O(N) work done here with
//! libtorch operations, so both backends only deal with rows.

mod compile;
pub(crate) mod cpu;
pub mod cuda;
mod device;
#[cfg(feature = "testing")]
mod emulation;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Head, Reduction};

/// Unweighted losses per row, as the row passes write them.
pub(crate) struct LossRows {
    /// `[N]` f32; 0 for background rows.
    pub class_loss: Tensor,
    /// `[N]` f32 (detection only).
    pub objectness_loss: Option<Tensor>,
}

impl LossRows {
    pub(crate) fn zeros(n: i64, detection: bool, device: Device) -> LossRows {
        LossRows {
            class_loss: Tensor::zeros([n], (Kind::Float, device)),
            objectness_loss: detection.then(|| Tensor::zeros([n], (Kind::Float, device))),
        }
    }
}

/// What multiplies each row's gradient besides its weight and `loss_weight`:
/// f32 tensors of `[N]` values or of one value shared by all rows, on the
/// scores' device. `None`: that part does not reach the loss.
pub(crate) struct Upstream {
    pub classes: Option<Tensor>,
    pub objectness: Option<Tensor>,
}

impl Upstream {
    /// Contiguous 1-D f32 copies on `device` (no copy when they already are).
    pub(crate) fn on(&self, device: Device) -> Upstream {
        let place = |t: &Option<Tensor>| {
            t.as_ref()
                .map(|t| t.to_device(device).to_kind(Kind::Float).contiguous().view([-1]))
        };
        Upstream {
            classes: place(&self.classes),
            objectness: place(&self.objectness),
        }
    }

    /// The step between rows of a multiplier placed by [`Upstream::on`]: 0
    /// for one value shared by every row, else 1.
    pub(crate) fn stride(t: &Tensor) -> usize {
        if t.numel() == 1 {
            0
        } else {
            1
        }
    }
}

/// Whether the fused rows of a call on `device` run as the CUDA kernel: on
/// CUDA tensors, and on CPU tensors under the kernel emulator (tests).
pub(crate) fn on_kernel(device: Device) -> bool {
    match device {
        Device::Cuda(_) => true,
        Device::Cpu => crate::probe::emulating(),
        _ => false,
    }
}

/// What runs the rows of a call: the CUDA kernel or the CPU mirror.
enum RowsOn {
    Kernel,
    Mirror,
}

fn rows_on(device: Device) -> Result<RowsOn> {
    if on_kernel(device) {
        Ok(RowsOn::Kernel)
    } else if device == Device::Cpu {
        Ok(RowsOn::Mirror)
    } else {
        bail!("no fused path for scores on {device:?}")
    }
}

/// Why the fused path cannot take scores of `kind` on `device`, or `None`
/// when it can. On a CUDA device the first ask compiles and loads the
/// kernels (once per process and device).
pub(crate) fn unsupported(device: Device, kind: Kind) -> Option<String> {
    if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Some(format!(
            "the fused path computes f32, f16 and bf16 scores, got {kind:?}; use Backend::Reference (or Auto) for f64"
        ));
    }
    match device {
        Device::Cpu => None,
        Device::Cuda(ordinal) => {
            cuda::unavailable_reason(ordinal).map(|why| format!("the CUDA kernels are unavailable: {why}"))
        }
        other => Some(format!("no fused path for scores on {other:?}")),
    }
}

/// The loss through the autograd node: what `SeesawLoss::forward` returns on
/// the fused path.
pub(crate) fn forward(call: &Call) -> Result<Parts> {
    let (classes, objectness) = crate::autograd::apply(call)?;
    Ok(Parts {
        classes: select_positive(call, classes),
        objectness,
    })
}

/// Loss pass of the node's forward: the reduced parts (per row for
/// [`Reduction::None`]) and the row stats its backward needs.
pub(crate) fn node_forward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let (rows, stats) = match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::forward(call)?,
        RowsOn::Kernel => cuda::forward(call)?,
    };
    let (classes, objectness) = reduce(call, rows, mean_divisors(call).as_ref());
    Ok((classes, objectness, stats))
}

/// Gradient pass of the node's backward. `g_classes` / `g_objectness` are
/// the upstream gradients of the node's outputs (`None` when an output did not
/// reach the loss).
pub(crate) fn node_backward(
    call: &Call,
    stats: &Tensor,
    g_classes: Option<Tensor>,
    g_objectness: Option<Tensor>,
) -> Result<Tensor> {
    let divisors = mean_divisors(call);
    let scaled = |g: Tensor, divisor: Option<&Divisor>| {
        let g = in_kind(g, Kind::Float);
        match divisor {
            Some(d) => d.divide(g, 1.0),
            None => g,
        }
    };
    let upstream = Upstream {
        classes: g_classes.map(|g| scaled(g, divisors.as_ref().map(|d| &d.0))),
        objectness: g_objectness.map(|g| scaled(g, divisors.as_ref().map(|d| &d.1))),
    };
    match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::backward(call, stats, &upstream),
        RowsOn::Kernel => cuda::backward(call, stats, &upstream),
    }
}

/// The loss (detached) and the gradient of its total with respect to the
/// scores, from one fused pass.
pub(crate) fn forward_backward(call: &Call) -> Result<(Parts, Tensor)> {
    let divisors = mean_divisors(call);
    // The gradient of the total: one over each part's mean divisor, else 1.
    let detection = call.head() == Head::Detection;
    let upstream = match &divisors {
        Some((c, o)) => Upstream {
            classes: Some(c.reciprocal(call)),
            objectness: detection.then(|| o.reciprocal(call)),
        },
        None => {
            let one = scalar(1.0, call);
            Upstream {
                classes: Some(one.shallow_clone()),
                objectness: detection.then_some(one),
            }
        }
    };
    let (rows, grad) = match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::forward_backward(call, &upstream)?,
        RowsOn::Kernel => cuda::forward_backward(call, &upstream)?,
    };
    let (classes, objectness) = reduce(call, rows, divisors.as_ref());
    Ok((
        Parts {
            classes: select_positive(call, classes),
            objectness,
        },
        grad,
    ))
}

/// Applies weights, `loss_weight` and the reduction to per-row losses. With
/// [`Reduction::None`] the class part keeps every row (background rows hold
/// 0); [`select_positive`] drops them. `mean` is [`mean_divisors`]'s result.
/// Few operations: at small N each one's dispatch costs more than its work.
fn reduce(call: &Call, rows: LossRows, mean: Option<&(Divisor, Divisor)>) -> (Tensor, Option<Tensor>) {
    let kind = call.compute_kind;
    let weigh = |loss: Tensor| {
        let loss = in_kind(loss, kind);
        match &call.weights {
            Some(w) => loss * w,
            None => loss,
        }
    };
    let finish = |rows: Tensor, divisor: Option<&Divisor>| match (call.reduction(), divisor) {
        (Reduction::None, _) => times(rows, call.exact.loss_weight),
        (_, None) => times(rows.sum(kind), call.exact.loss_weight),
        (_, Some(d)) => d.divide(rows.sum(kind), call.exact.loss_weight),
    };
    let classes = finish(weigh(rows.class_loss), mean.map(|m| &m.0));
    let objectness = rows.objectness_loss.map(|l| finish(weigh(l), mean.map(|m| &m.1)));
    (classes, objectness)
}

/// `t` in `kind`, with no operation when it already is.
fn in_kind(t: Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t
    } else {
        t.to_kind(kind)
    }
}

/// `t * factor`, with no operation for a factor of 1.
fn times(t: Tensor, factor: f64) -> Tensor {
    if factor == 1.0 {
        t
    } else {
        t * factor
    }
}

/// A 0-dim f32 tensor on the scores' device, filled there: a host-to-device
/// copy of a scalar would make the host wait for the stream.
fn scalar(v: f64, call: &Call) -> Tensor {
    Tensor::full([], v, (Kind::Float, call.scores.device()))
}

/// What a [`Reduction::Mean`] sum of one part is divided by.
enum Divisor {
    /// Known on the host: `avg_factor + f32::EPSILON`, or the row count.
    Known(f64),
    /// The positive rows of a detection head's class part (at least 1), as
    /// a 0-dim f32 tensor counted on the device, when the call's host read
    /// did not bring them (`device_checks_on_host(false)`): reading it back
    /// would make the host wait for the GPU.
    Counted(Tensor),
}

impl Divisor {
    /// `t / divisor * factor`.
    fn divide(&self, t: Tensor, factor: f64) -> Tensor {
        match self {
            Divisor::Known(d) => times(t, factor / d),
            Divisor::Counted(n) => times(t / n, factor),
        }
    }

    /// One over the divisor, as a 0-dim f32 tensor on the scores' device.
    fn reciprocal(&self, call: &Call) -> Tensor {
        match self {
            Divisor::Known(d) => scalar(1.0 / d, call),
            Divisor::Counted(n) => n.reciprocal(),
        }
    }
}

/// The divisors of a [`Reduction::Mean`], per part (classes, objectness):
/// `avg_factor + f32::EPSILON` when given, else the part's row count
/// (positive rows of a detection head's class part). `None` for the other
/// reductions, which divide nothing.
fn mean_divisors(call: &Call) -> Option<(Divisor, Divisor)> {
    if call.reduction() != Reduction::Mean {
        return None;
    }
    if let Some(avg) = call.avg_factor() {
        let d = avg + f32::EPSILON as f64;
        return Some((Divisor::Known(d), Divisor::Known(d)));
    }
    let all = call.labels.size()[0].max(1) as f64;
    let classes = match call.head() {
        Head::Classification => Divisor::Known(all),
        Head::Detection => match call.positive_rows() {
            Some(n) => Divisor::Known(n.max(1) as f64),
            None => {
                let _guard = tch::no_grad_guard();
                Divisor::Counted(call.labels.lt(call.num_classes()).sum(Kind::Float).clamp_min(1.0))
            }
        },
    };
    Some((classes, Divisor::Known(all)))
}

/// [`Reduction::None`] on the detection head: one class-loss entry per
/// positive row. The one host read the semantics force: the output's length
/// is the number of positive rows.
fn select_positive(call: &Call, classes: Tensor) -> Tensor {
    if call.head() == Head::Detection && call.reduction() == Reduction::None {
        crate::probe::host_read();
        let positive = call.labels.lt(call.num_classes()).nonzero().squeeze_dim(1);
        classes.index_select(0, &positive)
    } else {
        classes
    }
}
