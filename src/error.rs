//! [`Error`]: what can go wrong in a call, as values a caller can match on.

use std::fmt;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. The first variants are mistakes of the caller (an error
/// of that kind changes nothing); the last ones are the environment's.
///
/// ```
/// use seesaw_loss::{Error, SeesawConfig, SeesawLoss};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3))?;
/// let scores = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
/// match loss.forward(&scores, &Tensor::from_slice(&[0i64, 5]), None, None) {
///     Err(Error::Label { row: Some(1), label: 5, .. }) => {}
///     other => panic!("expected a label error, got {other:?}"),
/// }
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A tensor of the call has the wrong shape (`cls_score`, `labels`,
    /// `label_weights`).
    Shape(String),
    /// A tensor of the call has a kind (dtype) the call cannot take.
    Dtype(String),
    /// The tensors of a call, or the counts, are not on one device.
    Device(String),
    /// A label outside the head's range (`[0, C]` for detection, `C` being
    /// background; `[0, C)` for classification).
    Label {
        /// The first row holding a bad label, when known (immediate checks on
        /// the reference path report the smallest or largest label only).
        row: Option<i64>,
        /// The label.
        label: i64,
        /// The allowed range, as text.
        allowed: String,
        /// Whether the batch was an earlier call's (deferred checks): that
        /// call changed nothing, and this one did nothing either.
        earlier_call: bool,
    },
    /// A label weight that is NaN or infinite.
    Weight {
        /// The first row holding one, and its value, when known.
        row: Option<(i64, f32)>,
        /// As in [`Error::Label`].
        earlier_call: bool,
    },
    /// An `avg_factor` the reduction cannot take.
    AvgFactor(String),
    /// A configuration a loss cannot be built with.
    Config(String),
    /// Counts that cannot be used: the wrong length for the head, or values
    /// that are not counts (NaN, infinite, negative), from a checkpoint or
    /// set by hand.
    Counts(String),
    /// The CUDA kernels cannot be had here (no driver, no NVRTC, a compile or
    /// load failure): the reason. A call returns it only under
    /// [`Backend::Fused`](crate::Backend::Fused); `Auto` falls back to the
    /// reference path.
    KernelUnavailable(String),
    /// libtorch failed (running out of memory included).
    Torch(tch::TchError),
    /// The crate's own machinery failed: the autograd node, a kernel launch,
    /// the driver. The text says where.
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EARLIER: &str = " (in the batch of an earlier call, which changed nothing: its losses were NaN, \
                               its gradient zero, its labels not counted)";
        match self {
            Error::Shape(m) | Error::Dtype(m) | Error::Device(m) | Error::AvgFactor(m) | Error::Counts(m) => {
                f.write_str(m)
            }
            Error::Config(m) => write!(f, "invalid config: {m}"),
            Error::Label {
                row,
                label,
                allowed,
                earlier_call,
            } => {
                let negative = if *label < 0 { "negative " } else { "" };
                write!(f, "labels must be in {allowed}, found {negative}label {label}")?;
                if let Some(row) = row {
                    write!(f, " at row {row}")?;
                }
                f.write_str(if *earlier_call {
                    EARLIER
                } else {
                    "; the counts were left as they are"
                })
            }
            Error::Weight { row, earlier_call } => {
                match row {
                    Some((row, value)) => write!(f, "label_weights must be finite, found {value} at row {row}")?,
                    None => f.write_str("label_weights must be finite, found NaN or an infinite weight")?,
                }
                f.write_str(if *earlier_call {
                    EARLIER
                } else {
                    "; the counts were left as they are"
                })
            }
            Error::KernelUnavailable(why) => write!(f, "the CUDA kernels are unavailable: {why}"),
            Error::Torch(e) => write!(f, "libtorch: {e}"),
            Error::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Torch(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e)
    }
}

/// The crate's machinery reports with `anyhow` inside; at the public
/// boundary its failures are [`Error::Internal`] (or [`Error::Torch`] when
/// libtorch is the cause).
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Error>() {
            Ok(error) => error,
            Err(e) => match e.downcast::<tch::TchError>() {
                Ok(torch) => Error::Torch(torch),
                Err(e) => Error::Internal(format!("{e:#}")),
            },
        }
    }
}
