//! The loss's configuration: which head, the Seesaw hyper-parameters, the
//! reduction and the backend.

use crate::error::{Error, Result};

/// How per-row losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// One loss per row: the class loss has one entry per positive row (in row
    /// order), the objectness loss one entry per row.
    None,
    /// Sum over rows divided by the number of rows of that part, or by
    /// `avg_factor + f32::EPSILON` when an `avg_factor` is given.
    Mean,
    /// Sum over rows. `avg_factor` is rejected with this reduction.
    Sum,
}

/// Which implementation computes the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The fused path where one exists for the scores' device (the CUDA kernel
    /// on CUDA tensors, its multi-threaded CPU mirror on CPU tensors), else
    /// [`Backend::Reference`].
    Auto,
    /// The pure-libtorch path: plain tch operations, autograd through them.
    /// Runs wherever libtorch runs; every other path is tested against it.
    Reference,
    /// The fused path; an error where none exists for the scores' device.
    Fused,
}

/// When bad labels, weights and counts on the fused kernels are reported.
///
/// A bad batch is one with a label out of range for the head, a label
/// weight that is NaN or infinite, or a negative count (from a checkpoint).
/// Whichever the setting, it changes nothing: its labels are not counted,
/// its losses are NaN and its gradient is zero, and no bad value ever
/// indexes memory (so it cannot fault the GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Checks {
    /// The default on CUDA: the kernels check the batch on the device and
    /// record its first problem (row, value, allowed range); the error comes
    /// back from the next call on the loss, or from
    /// [`SeesawLoss::check`](crate::SeesawLoss::check). No call waits for
    /// the GPU.
    Deferred,
    /// The default on CPU, where it costs nothing: the call checks the batch
    /// before anything changes and returns the error itself. On CUDA this
    /// reads a few values back to the host once per call, which waits for
    /// the GPU to catch up.
    Immediate,
}

/// The two heads the crate supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// mmdetection-style: `cls_score` is `[N, C+2]`, the last two columns are
    /// objectness logits (foreground, background), labels are in `[0, C]` with
    /// `C` meaning background.
    Detection,
    /// mmpretrain-style: `cls_score` is `[N, C]`, labels are in `[0, C)`.
    Classification,
}

/// Configuration of a [`SeesawLoss`](crate::SeesawLoss): made by
/// [`SeesawConfig::detection`] or [`SeesawConfig::classification`], set with
/// the chained methods of the same names as the fields, read from the fields.
/// [`SeesawLoss::new`](crate::SeesawLoss::new) checks the values.
///
/// ```
/// use seesaw_loss::{Reduction, SeesawConfig};
/// let config = SeesawConfig::detection(1203).p(0.8).q(2.0).reduction(Reduction::Sum);
/// assert_eq!(config.num_classes(), 1203);
/// assert_eq!((config.p, config.reduction), (0.8, Reduction::Sum));
/// ```
#[derive(Clone, Debug)]
pub struct SeesawConfig {
    head: Head,
    num_classes: i64,
    /// Exponent of the mitigation factor (default 0.8); 0 switches it off.
    pub p: f64,
    /// Exponent of the compensation factor (default 2.0); 0 switches it off.
    pub q: f64,
    /// Floor of the self score in the compensation ratio (default 1e-2).
    pub eps: f64,
    /// Factor on both parts of the loss (default 1.0).
    pub loss_weight: f64,
    /// The reduction of [`SeesawLoss::forward`](crate::SeesawLoss::forward)
    /// (default [`Reduction::Mean`]).
    pub reduction: Reduction,
    /// Which implementation computes a call (default [`Backend::Auto`]).
    pub backend: Backend,
    /// When bad batches are reported; `None` (the default) is
    /// [`Checks::Deferred`] on the CUDA kernels and [`Checks::Immediate`]
    /// elsewhere.
    pub checks: Option<Checks>,
}

impl SeesawConfig {
    fn new(head: Head, num_classes: i64) -> Self {
        SeesawConfig {
            head,
            num_classes,
            p: 0.8,
            q: 2.0,
            eps: 1e-2,
            loss_weight: 1.0,
            reduction: Reduction::Mean,
            backend: Backend::Auto,
            checks: None,
        }
    }

    /// A detection head with `num_classes` object classes: `cls_score` is
    /// `[N, num_classes + 2]` and label `num_classes` is background.
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::detection(80);
    /// assert_eq!(config.cls_channels(), 82);
    /// ```
    pub fn detection(num_classes: i64) -> Self {
        Self::new(Head::Detection, num_classes)
    }

    /// A classification head with `num_classes` classes: `cls_score` is
    /// `[N, num_classes]`.
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::classification(1000);
    /// assert_eq!(config.cls_channels(), 1000);
    /// ```
    pub fn classification(num_classes: i64) -> Self {
        Self::new(Head::Classification, num_classes)
    }

    /// Exponent of the mitigation factor (default 0.8); 0 switches it off.
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::classification(10).p(0.0);
    /// assert_eq!(config.p, 0.0);
    /// ```
    pub fn p(mut self, v: f64) -> Self {
        self.p = v;
        self
    }

    /// Exponent of the compensation factor (default 2.0); 0 switches it off.
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::classification(10).q(0.0);
    /// assert_eq!(config.q, 0.0);
    /// ```
    pub fn q(mut self, v: f64) -> Self {
        self.q = v;
        self
    }

    /// Floor of the self score in the compensation ratio (default 1e-2).
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::classification(10).eps(1e-3);
    /// assert_eq!(config.eps, 1e-3);
    /// ```
    pub fn eps(mut self, v: f64) -> Self {
        self.eps = v;
        self
    }

    /// Factor applied to both parts of the loss (default 1.0).
    ///
    /// ```
    /// let config = seesaw_loss::SeesawConfig::classification(10).loss_weight(0.5);
    /// assert_eq!(config.loss_weight, 0.5);
    /// ```
    pub fn loss_weight(mut self, v: f64) -> Self {
        self.loss_weight = v;
        self
    }

    /// Default reduction of [`SeesawLoss::forward`](crate::SeesawLoss::forward)
    /// (default [`Reduction::Mean`]).
    ///
    /// ```
    /// use seesaw_loss::{Reduction, SeesawConfig};
    /// let config = SeesawConfig::classification(10).reduction(Reduction::Sum);
    /// assert_eq!(config.reduction, Reduction::Sum);
    /// ```
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }

    /// Which implementation to use (default [`Backend::Auto`]).
    ///
    /// ```
    /// use seesaw_loss::{Backend, SeesawConfig};
    /// let config = SeesawConfig::classification(10).backend(Backend::Reference);
    /// assert_eq!(config.backend, Backend::Reference);
    /// ```
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }

    /// When bad labels, weights and counts are reported (see [`Checks`]).
    /// Unset, it is [`Checks::Deferred`] on the CUDA kernels and
    /// [`Checks::Immediate`] everywhere else. The reference path always
    /// checks immediately: its libtorch operations would fault on a bad
    /// index.
    ///
    /// ```
    /// use seesaw_loss::{Checks, SeesawConfig};
    /// let config = SeesawConfig::detection(1203).checks(Checks::Immediate);
    /// assert_eq!(config.checks, Some(Checks::Immediate));
    /// ```
    pub fn checks(mut self, checks: Checks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// The [`Checks`] a call gets: the setting, else the default for where
    /// it runs (`runs_on_kernels`: the call runs on the CUDA kernels, real or emulated).
    pub(crate) fn checks_for(&self, runs_on_kernels: bool) -> Checks {
        self.checks.unwrap_or(if runs_on_kernels {
            Checks::Deferred
        } else {
            Checks::Immediate
        })
    }

    /// The head this configuration describes.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The number of object classes `C` (background and objectness excluded).
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// Width of `cls_score`: `C + 2` for detection, `C` for classification.
    pub fn cls_channels(&self) -> i64 {
        match self.head {
            Head::Detection => self.num_classes + 2,
            Head::Classification => self.num_classes,
        }
    }

    /// Number of cumulative counters: `C + 1` for detection (background at
    /// index `C`), `C` for classification.
    pub fn num_counters(&self) -> i64 {
        match self.head {
            Head::Detection => self.num_classes + 1,
            Head::Classification => self.num_classes,
        }
    }

    /// Checks the values a loss cannot be built with.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::Config(m));
        if self.num_classes < 1 {
            return invalid(format!("num_classes must be at least 1, got {}", self.num_classes));
        }
        // The kernels index classes with 32-bit integers, and a detection
        // row has two more columns.
        let most = i32::MAX as i64 - 2;
        if self.num_classes > most {
            return invalid(format!("num_classes must be at most {most}, got {}", self.num_classes));
        }
        check_exponent("p", self.p)?;
        check_exponent("q", self.q)?;
        // The fused paths compute in f32: a value f32 cannot hold would make
        // them disagree with the reference path without an error.
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return invalid(format!("eps must be a finite number > 0, got {}", self.eps));
        }
        if self.eps < f32::MIN_POSITIVE as f64 {
            return invalid(format!(
                "eps must be at least {:e} (f32's smallest normal number; the fused paths compute in f32), got {:e}",
                f32::MIN_POSITIVE,
                self.eps
            ));
        }
        if !self.loss_weight.is_finite() || self.loss_weight.abs() > f32::MAX as f64 {
            return invalid(format!(
                "loss_weight must be finite and within f32's range (the fused paths compute in f32), got {}",
                self.loss_weight
            ));
        }
        Ok(())
    }
}

fn check_exponent(name: &str, v: f64) -> Result<()> {
    if !(v >= 0.0 && v <= f32::MAX as f64) {
        return Err(Error::Config(format!(
            "{name} must be a finite number >= 0 within f32's range (the fused paths compute in f32), got {v}"
        )));
    }
    Ok(())
}
