//! The fused paths: the row algorithm of [`crate::math`] as CUDA kernels
//! ([`cuda`]) or on CPU threads ([`cpu`]), one call in the same steps on
//! both:
//!
//! 1. [`prepare`]: check the batch, count its labels, write the log-count
//!    table and the call state (`seesaw_prepare` on the kernels);
//! 2. the rows, through the autograd node ([`crate::autograd`]): forward
//!    computes the losses, reduced as asked, and two statistics per row;
//!    backward recomputes the adjusted softmax and writes the gradient times
//!    the upstream gradient; nothing N x C lives between them;
//! 3. or [`forward_backward`]: both passes at once, for callers that want
//!    the loss and the gradient without autograd.
//!
//! Weights, `loss_weight`, the reduction and `avg_factor` are applied by the
//! row passes themselves, with deterministic reductions, so a call makes no
//! libtorch operation beyond allocating its outputs.

mod compile;
pub(crate) mod cpu;
pub mod cuda;
pub(crate) mod device;
#[cfg(feature = "testing")]
mod emulation;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Head, Reduction};
use crate::deferred::{BadBatch, ErrorRecord};
use crate::params::SeesawParams;

/// Per-row values of a loss pass: `loss_weight * weight * loss`.
pub(crate) struct LossRows {
    /// `[N]` f32; 0 for background rows.
    pub class_loss: Tensor,
    /// `[N]` f32 (detection only).
    pub objectness_loss: Option<Tensor>,
}

impl LossRows {
    /// Uninitialized rows: the passes write every one.
    pub(crate) fn empty(n: i64, detection: bool, device: Device) -> Result<LossRows> {
        Ok(LossRows {
            class_loss: Tensor::f_empty([n], (Kind::Float, device))?,
            objectness_loss: detection
                .then(|| Tensor::f_empty([n], (Kind::Float, device)))
                .transpose()?,
        })
    }
}

/// The upstream gradients of the node's outputs: f32 tensors of `[N]`
/// values or of one value shared by all rows, on the scores' device. The
/// row passes divide them by the means' divisors. `None`: that part does not
/// reach the loss.
pub(crate) struct Upstream {
    pub classes: Option<Tensor>,
    pub objectness: Option<Tensor>,
}

impl Upstream {
    /// Contiguous 1-D f32 copies on `device` (no copy when they already are).
    pub(crate) fn on(&self, device: Device) -> Result<Upstream> {
        let place = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            let Some(t) = t else { return Ok(None) };
            let t = if t.device() == device {
                t.shallow_clone()
            } else {
                t.f_to_device(device)?
            };
            Ok(Some(as_contiguous(&t, Kind::Float)?))
        };
        Ok(Upstream {
            classes: place(&self.classes)?,
            objectness: place(&self.objectness)?,
        })
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

/// `t` as a contiguous tensor of `kind`, with no operation when it already
/// is one: at small N each libtorch call costs more than its work.
pub(crate) fn as_contiguous(t: &Tensor, kind: Kind) -> Result<Tensor> {
    let t = if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.f_to_kind(kind)?
    };
    Ok(if t.is_contiguous() { t } else { t.f_contiguous()? })
}

/// Whether the fused rows of a call on `device` run as the CUDA kernel: on
/// CUDA tensors, and on CPU tensors under the kernel emulator (tests).
pub(crate) fn runs_on_kernels(device: Device) -> bool {
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
    if runs_on_kernels(device) {
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
pub(crate) fn unsupported(device: Device, kind: Kind) -> Option<crate::Error> {
    use crate::Error;
    if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Some(Error::Dtype(format!(
            "the fused path computes f32, f16 and bf16 scores, got {kind:?}; use Backend::Reference (or Auto) for f64"
        )));
    }
    match device {
        #[cfg(feature = "testing")]
        Device::Cpu if crate::probe::emulating() => device::emulated_kernels().err().map(Error::KernelUnavailable),
        Device::Cpu => None,
        Device::Cuda(ordinal) => cuda::unavailable_reason(ordinal).map(Error::KernelUnavailable),
        other => Some(Error::Device(format!("no fused path for scores on {other:?}"))),
    }
}

/// A call's labels (int64), weights and class table (f32), contiguous, as
/// both fused paths (the CPU mirror, the kernels) read them.
pub(crate) struct RowTensors {
    pub labels: Tensor,
    pub weights: Option<Tensor>,
    pub log_counts: Tensor,
}

impl RowTensors {
    pub(crate) fn of(call: &Call) -> Result<RowTensors> {
        Ok(RowTensors {
            labels: as_contiguous(&call.labels, Kind::Int64)?,
            weights: call
                .weights
                .as_ref()
                .map(|w| as_contiguous(w, Kind::Float))
                .transpose()?,
            log_counts: as_contiguous(&call.log_counts, Kind::Float)?,
        })
    }
}

/// What the prepare step of a call leaves for its rows.
pub(crate) struct Prepared {
    /// The class table, the batch counted: `[C]` f32 `log(max(n, 1))` on
    /// the CPU mirror; `[2, C]` on the kernels (`log(max(n, 1))`, then `n^p`,
    /// kernels/seesaw.cu "the class table").
    pub log_counts: Tensor,
    /// `[STATE_LEN]` int64 call state.
    pub state: Tensor,
    /// The batch's first problem, when the host knows it now (the CPU
    /// mirror); the kernels put theirs in the error record.
    pub bad: Option<BadBatch>,
}

/// What a loss keeps for its fused calls besides the counts.
#[derive(Default)]
pub(crate) struct LossState {
    /// Where the kernels record a bad batch (made at the first kernel call).
    pub record: Option<ErrorRecord>,
}

/// The prepare step of a fused call: checks the batch, adds its labels to
/// `counts` (int64) when it is good (to `histogram`, zeros shaped like the
/// counts, when given), and writes the log-count table of `counts` and the
/// call state. One kernel launch on the kernel path (its problems go to the
/// error record, made here at the first call), host code on the CPU mirror.
pub(crate) fn prepare(
    params: &SeesawParams,
    labels: &Tensor,
    weights: Option<&Tensor>,
    counts: &Tensor,
    histogram: Option<&Tensor>,
    state: &mut LossState,
) -> Result<Prepared> {
    match rows_on(labels.device())? {
        RowsOn::Mirror => {
            let (log_counts, state, bad) = cpu::prepare(params, labels, weights, counts, histogram)?;
            Ok(Prepared { log_counts, state, bad })
        }
        RowsOn::Kernel => {
            if state.record.is_none() {
                state.record = Some(ErrorRecord::new(labels.device())?);
            }
            let record = state.record.as_ref().expect("made above");
            let (log_counts, state) = cuda::prepare_call(params, labels, weights, counts, histogram, record)?;
            Ok(Prepared {
                log_counts,
                state,
                bad: None,
            })
        }
    }
}

/// The class table of a call that counts nothing (the functional form), from
/// its `[C]` f32 `log(max(n, 1))`: the same for the CPU mirror, and for the
/// kernels the `[2, C]` table `seesaw_prepare` writes (kernels/seesaw.cu,
/// "the class table"): `log_counts`, then `exp(p * log_counts)` in f32.
pub(crate) fn class_table(log_counts: Tensor, p: f32) -> Result<Tensor> {
    match rows_on(log_counts.device())? {
        RowsOn::Mirror => Ok(log_counts),
        RowsOn::Kernel => {
            let powers = log_counts.f_mul_scalar(p as f64)?.f_exp()?;
            Ok(Tensor::f_stack(&[log_counts, powers], 0)?)
        }
    }
}

/// The call state of a batch checked elsewhere, whose `positive` rows are
/// all its rows (a classification head's).
pub(crate) fn good_batch_state(positive: i64, device: Device) -> Result<Tensor> {
    let mut state = vec![0i64; crate::params::STATE_LEN as usize];
    state[crate::params::STATE_POSITIVE as usize] = positive;
    Ok(Tensor::f_from_slice(&state)?.f_to_device(device)?)
}

/// The loss through the autograd node: what `SeesawLoss::forward` returns on
/// the fused path.
pub(crate) fn forward(call: &Call) -> Result<Parts> {
    let (classes, objectness) = crate::autograd::apply(call)?;
    Ok(Parts {
        classes: select_positive(call, classes)?,
        objectness,
    })
}

/// Loss pass of the node's forward: the reduced parts (per row for
/// [`Reduction::None`]) and the row stats its backward needs.
pub(crate) fn node_forward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::forward(call),
        RowsOn::Kernel => cuda::forward(call),
    }
}

/// Gradient pass of the node's backward. `g_classes` / `g_objectness` are
/// the upstream gradients of the node's outputs (`None` when an output did not
/// reach the loss); the passes read them where they are.
pub(crate) fn node_backward(
    call: &Call,
    stats: &Tensor,
    g_classes: Option<Tensor>,
    g_objectness: Option<Tensor>,
) -> Result<Tensor> {
    let upstream = Upstream {
        classes: g_classes,
        objectness: g_objectness,
    };
    match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::backward(call, stats, &upstream),
        RowsOn::Kernel => cuda::backward(call, stats, &upstream),
    }
}

/// The loss (detached) and the gradient of its total with respect to the
/// scores, from one fused pass.
pub(crate) fn forward_backward(call: &Call) -> Result<(Parts, Tensor)> {
    let (classes, objectness, grad) = match rows_on(call.scores.device())? {
        RowsOn::Mirror => cpu::forward_backward(call)?,
        RowsOn::Kernel => cuda::forward_backward(call)?,
    };
    Ok((
        Parts {
            classes: select_positive(call, classes)?,
            objectness,
        },
        grad,
    ))
}

/// [`Reduction::None`] on the detection head: one class-loss entry per
/// positive row. The one host read the semantics force: the output's length
/// is the number of positive rows.
fn select_positive(call: &Call, classes: Tensor) -> Result<Tensor> {
    if call.head() == Head::Detection && call.reduction() == Reduction::None {
        crate::probe::host_read();
        let positive = call.labels.f_lt(call.num_classes())?.f_nonzero()?.f_squeeze_dim(1)?;
        Ok(classes.f_index_select(0, &positive)?)
    } else {
        Ok(classes)
    }
}
