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

pub(crate) mod cpu;
pub mod cuda;
#[cfg(feature = "kernel-emulation")]
pub mod emulation;

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
        Device::Cpu => emulating(),
        _ => false,
    }
}

#[cfg(feature = "kernel-emulation")]
fn emulating() -> bool {
    emulation::enabled()
}

#[cfg(not(feature = "kernel-emulation"))]
fn emulating() -> bool {
    false
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

/// Why the fused path cannot take a call, or `None` when it can.
pub(crate) fn unsupported(scores: &Tensor) -> Option<String> {
    let kind = scores.kind();
    if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Some(format!(
            "the fused path computes f32, f16 and bf16 scores, got {kind:?}; use Backend::Reference (or Auto) for f64"
        ));
    }
    match scores.device() {
        Device::Cpu => None,
        Device::Cuda(_) => cuda::unavailable_reason(),
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
    let (classes, objectness) = reduce(call, rows, mean_scales(call).as_ref());
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
    let scales = mean_scales(call);
    let scaled = |g: Tensor, scale: Option<&Tensor>| {
        let g = g.to_kind(Kind::Float);
        match scale {
            Some(s) => g * s,
            None => g,
        }
    };
    let upstream = Upstream {
        classes: g_classes.map(|g| scaled(g, scales.as_ref().map(|s| &s.0))),
        objectness: g_objectness.map(|g| scaled(g, scales.as_ref().map(|s| &s.1))),
    };
    match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::backward(call, stats, &upstream),
        RowsOn::Kernel => cuda::backward(call, stats, &upstream),
    }
}

/// The loss (detached) and the gradient of its total with respect to the
/// scores, from one fused pass.
pub(crate) fn forward_backward(call: &Call) -> Result<(Parts, Tensor)> {
    let scales = mean_scales(call);
    // The gradient of the total: each part's mean factor, else 1.
    let (class_scale, objectness_scale) = match &scales {
        Some((c, o)) => (c.shallow_clone(), o.shallow_clone()),
        None => (scalar(1.0, call), scalar(1.0, call)),
    };
    let upstream = Upstream {
        classes: Some(class_scale),
        objectness: (call.head == Head::Detection).then_some(objectness_scale),
    };
    let (rows, grad) = match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::forward_backward(call, &upstream)?,
        RowsOn::Kernel => cuda::forward_backward(call, &upstream)?,
    };
    let (classes, objectness) = reduce(call, rows, scales.as_ref());
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
/// 0); [`select_positive`] drops them. `mean` is [`mean_scales`]'s result.
fn reduce(call: &Call, rows: LossRows, mean: Option<&(Tensor, Tensor)>) -> (Tensor, Option<Tensor>) {
    let kind = call.compute_kind;
    let weigh = |loss: Tensor| {
        let scaled = loss.to_kind(kind) * call.loss_weight;
        match &call.weights {
            Some(w) => scaled * w,
            None => scaled,
        }
    };
    let finish = |rows: Tensor, scale: Option<&Tensor>| match (call.reduction, scale) {
        (Reduction::None, _) => rows,
        (_, None) => rows.sum(kind),
        (_, Some(scale)) => rows.sum(kind) * scale.to_kind(kind),
    };
    let classes = finish(weigh(rows.class_loss), mean.map(|m| &m.0));
    let objectness = rows.objectness_loss.map(|l| finish(weigh(l), mean.map(|m| &m.1)));
    (classes, objectness)
}

/// A 0-dim f32 tensor on the scores' device, filled there: a host-to-device
/// copy of a scalar would make the host wait for the stream.
fn scalar(v: f64, call: &Call) -> Tensor {
    Tensor::full([], v, (Kind::Float, call.scores.device()))
}

/// The factors a [`Reduction::Mean`] sum is multiplied by, per part (classes,
/// objectness), as 0-dim f32 tensors on the scores' device: one over
/// `avg_factor + f32::EPSILON` when given, else over the part's row count
/// (positive rows of a detection head's class part, counted on the device).
/// `None` for the other reductions, which scale nothing.
fn mean_scales(call: &Call) -> Option<(Tensor, Tensor)> {
    if call.reduction != Reduction::Mean {
        return None;
    }
    if let Some(avg) = call.avg_factor {
        let s = scalar(1.0 / (avg + f32::EPSILON as f64), call);
        return Some((s.shallow_clone(), s));
    }
    let all = scalar(1.0 / call.labels.size()[0].max(1) as f64, call);
    let classes = match call.head {
        Head::Classification => all.shallow_clone(),
        Head::Detection => {
            let _guard = tch::no_grad_guard();
            call.labels
                .lt(call.num_classes)
                .sum(Kind::Float)
                .clamp_min(1.0)
                .reciprocal()
        }
    };
    Some((classes, all))
}

/// [`Reduction::None`] on the detection head: one class-loss entry per
/// positive row. The one host read the semantics force: the output's length
/// is the number of positive rows.
fn select_positive(call: &Call, classes: Tensor) -> Tensor {
    if call.head == Head::Detection && call.reduction == Reduction::None {
        let positive = call.labels.lt(call.num_classes).nonzero().squeeze_dim(1);
        classes.index_select(0, &positive)
    } else {
        classes
    }
}
