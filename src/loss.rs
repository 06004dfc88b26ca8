//! [`SeesawLoss`]: the public type, its outputs, and the order of one call.

use std::borrow::Borrow;

use tch::{Device, Kind, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Backend, Checks, Head, Reduction, SeesawConfig};
use crate::count_sync::CountSync;
use crate::counts::Counts;
use crate::deferred::{BadBatch, ErrorRecord};
use crate::error::{Error, Result};
use crate::params::SeesawParams;
use crate::{fused, inputs, reference};

/// The Seesaw loss with its cumulative class counts.
///
/// One [`forward`](SeesawLoss::forward) call, in order:
/// checks every input (an error changes nothing), adds the batch's labels to
/// the counts (summed over all ranks first when a [`CountSync`] is set, see
/// [`set_count_sync`](SeesawLoss::set_count_sync)), then computes the class
/// loss over positive rows and, for the detection head, the objectness loss
/// over all rows.
///
/// ```
/// use seesaw_loss::{SeesawConfig, SeesawLoss};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let mut loss = SeesawLoss::new(vs.root() / "seesaw", SeesawConfig::detection(3))?;
/// let scores = Tensor::randn([4, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
/// let labels = Tensor::from_slice(&[0i64, 2, 3, 3]); // 3 = background
/// let out = loss.forward(&scores, &labels, None, None)?;
/// out.total().backward();
/// assert_eq!(Vec::<i64>::try_from(loss.cum_samples()?)?, [1, 0, 1, 2]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct SeesawLoss {
    config: SeesawConfig,
    counts: Counts,
    /// The error record and the CPU mirror's cache.
    fused: fused::LossState,
    /// A bad batch the CPU mirror found under deferred checks.
    pending: Option<BadBatch>,
    /// Sums each step's label histogram over the ranks (data parallelism).
    sync: Option<Box<dyn CountSync>>,
}

/// The loss of one call.
#[derive(Debug)]
pub struct SeesawOutput {
    /// The Seesaw class loss: a scalar, or one entry per positive row for
    /// [`Reduction::None`].
    pub classes: Tensor,
    /// The objectness loss (detection head only): a scalar, or one entry per
    /// row for [`Reduction::None`].
    pub objectness: Option<Tensor>,
}

impl SeesawOutput {
    /// Both parts added, for `.backward()`. With [`Reduction::None`] the
    /// entries of both parts are summed.
    ///
    /// ```
    /// # use seesaw_loss::SeesawOutput;
    /// # use tch::Tensor;
    /// let out = SeesawOutput { classes: Tensor::from(1.5f32), objectness: Some(Tensor::from(0.5f32)) };
    /// assert_eq!(out.total().double_value(&[]), 2.0);
    /// ```
    pub fn total(&self) -> Tensor {
        match self.f_total() {
            Ok(total) => total,
            Err(e) => panic!("SeesawOutput::total: {e}"),
        }
    }

    /// [`total`](SeesawOutput::total) as a `Result`: a libtorch failure
    /// (out of memory) is an error, not a panic.
    ///
    /// ```
    /// # use seesaw_loss::SeesawOutput;
    /// # use tch::Tensor;
    /// let out = SeesawOutput { classes: Tensor::from(1.5f32), objectness: None };
    /// assert_eq!(out.f_total()?.double_value(&[]), 1.5);
    /// # Ok::<(), seesaw_loss::Error>(())
    /// ```
    pub fn f_total(&self) -> Result<Tensor> {
        // A reduced part is already a scalar: summing it again would be one
        // more operation (one more launch on a GPU) for nothing.
        let scalar = |t: &Tensor| -> Result<Tensor> {
            Ok(if t.dim() == 0 {
                t.shallow_clone()
            } else {
                t.f_sum(t.kind())?
            })
        };
        Ok(match &self.objectness {
            Some(obj) => scalar(&self.classes)?.f_add(&scalar(obj)?)?,
            None => scalar(&self.classes)?,
        })
    }
}

/// The implementation that computes a call (see [`SeesawLoss::path_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComputePath {
    /// The fused CUDA kernels (`kernels/seesaw.cu`).
    CudaKernel,
    /// The fused path's multi-threaded CPU mirror of the kernels.
    CpuMirror,
    /// The pure-libtorch path.
    Reference,
}

/// Which implementation computes a call, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChoice {
    /// The implementation.
    pub path: ComputePath,
    /// Why: the configured backend, the scores' kind and device, and what
    /// failed when the kernels are unavailable.
    pub reason: String,
}

/// Accuracies in percent, as mmdetection's `get_accuracy` reports them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeesawAccuracy {
    /// Top-1 accuracy of the class logits over positive rows (all rows for
    /// classification); 0 when there are none.
    pub classes: f64,
    /// Accuracy of the objectness pair over all rows (detection only).
    pub objectness: Option<f64>,
}

impl SeesawLoss {
    /// Creates the loss and registers its counts (`cum_samples`, int64, not
    /// trainable) under `path`, so they are saved and loaded with the
    /// `VarStore`. The counts live on the `VarStore`'s device, which must be
    /// the device of the scores passed to [`forward`](SeesawLoss::forward).
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let loss = SeesawLoss::new(vs.root() / "loss_cls", SeesawConfig::classification(10))?;
    /// assert!(vs.variables().contains_key("loss_cls.cum_samples"));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn new<'a, P: Borrow<tch::nn::Path<'a>>>(path: P, config: SeesawConfig) -> Result<Self> {
        config.validate()?;
        let counts = Counts::new(path.borrow(), config.num_counters())?;
        Ok(SeesawLoss {
            config,
            counts,
            fused: Default::default(),
            pending: None,
            sync: None,
        })
    }

    /// Makes the counts global across data-parallel ranks (`Some`), or local
    /// to this process again (`None`, the default). With a hook, every call
    /// sums its batch's label histogram over all ranks (the hook's
    /// collective) before adding it to the counts: every rank then holds the
    /// counts of every rank's labels, as one process fed the whole batches
    /// would (the module documentation of [`CountSync`] compares this with
    /// local counts and with DDP's rank-0 broadcast). Every rank must make
    /// the same calls in step. A rank whose call fails before the collective
    /// (a bad batch, a bad input) still joins it, contributing nothing, and
    /// adds the other ranks' labels to its counts: every rank's counts stay
    /// the same, as if that shard were absent. A call that fails after the
    /// collective (out of memory, say) takes the summed histogram back out of
    /// this rank's counts, so that rank's counts then differ from the
    /// others' by that step.
    ///
    /// ```
    /// use seesaw_loss::{CountSync, Result, SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// /// A world of one rank.
    /// struct Alone;
    /// impl CountSync for Alone {
    ///     fn sum_over_ranks(&mut self, _histogram: &mut Tensor) -> Result<()> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3))?;
    /// loss.set_count_sync(Some(Box::new(Alone)));
    /// let scores = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    /// loss.forward(&scores, &Tensor::from_slice(&[0i64, 2]), None, None)?;
    /// assert_eq!(Vec::<i64>::try_from(loss.cum_samples()?)?, [1, 0, 1]);
    /// # Ok::<(), seesaw_loss::Error>(())
    /// ```
    pub fn set_count_sync(&mut self, sync: Option<Box<dyn CountSync>>) {
        self.sync = sync;
    }

    /// The configuration the loss was built with.
    pub fn config(&self) -> &SeesawConfig {
        &self.config
    }

    /// The loss with the configured reduction. See
    /// [`forward_with_reduction`](SeesawLoss::forward_with_reduction).
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(4))?;
    /// let scores = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    /// let out = loss.forward(&scores, &Tensor::from_slice(&[1i64, 3]), None, None)?;
    /// // Uniform logits and the defaults: the compensation factor is 1 and the
    /// // mitigation factor never exceeds 1, so the loss is at most ln 4.
    /// assert!(out.classes.double_value(&[]) <= 4f64.ln() + 1e-6);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn forward(
        &mut self,
        cls_score: &Tensor,
        labels: &Tensor,
        label_weights: Option<&Tensor>,
        avg_factor: Option<f64>,
    ) -> Result<SeesawOutput> {
        let reduction = self.config.reduction;
        self.forward_with_reduction(cls_score, labels, label_weights, avg_factor, reduction)
    }

    /// The loss of one batch with an explicit reduction (mmdetection's
    /// `reduction_override`).
    ///
    /// - `cls_score`: `[N, C+2]` (detection) or `[N, C]` (classification), f32,
    ///   f64, f16 or bf16, any layout, on the counts' device. The loss comes
    ///   back in f32 (f64 for f64 scores).
    /// - `labels`: `[N]` int64 or int32, in `[0, C]` (detection, `C` =
    ///   background) or `[0, C)`.
    /// - `label_weights`: `[N]` floating, multiplies the per-row losses of both
    ///   parts; treated as a constant.
    /// - `avg_factor`: divides a [`Reduction::Mean`] sum instead of the row
    ///   count (plus `f32::EPSILON`); an error with [`Reduction::Sum`].
    ///
    /// A bad batch (a label out of range, a weight that is not finite, a
    /// negative count) changes nothing; it is an error of this call or of a
    /// later one as [`Checks`] says. On the CUDA kernels a call reads nothing
    /// back to the host by default, except [`Reduction::None`] on the
    /// detection head, whose output length is the number of positive rows.
    ///
    /// ```
    /// use seesaw_loss::{Reduction, SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(2))?;
    /// let scores = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
    /// let labels = Tensor::from_slice(&[0i64, 2, 1]);
    /// let out = loss.forward_with_reduction(&scores, &labels, None, None, Reduction::None)?;
    /// assert_eq!(out.classes.size(), [2]); // rows 0 and 2 are positive
    /// assert_eq!(out.objectness.unwrap().size(), [3]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn forward_with_reduction(
        &mut self,
        cls_score: &Tensor,
        labels: &Tensor,
        label_weights: Option<&Tensor>,
        avg_factor: Option<f64>,
        reduction: Reduction,
    ) -> Result<SeesawOutput> {
        let inputs = Inputs {
            cls_score,
            labels,
            label_weights,
            avg_factor,
            reduction,
        };
        self.run(inputs, |call, fused| {
            let parts = if fused {
                fused::forward(call)?
            } else {
                reference::forward(call)?
            };
            Ok(SeesawOutput::from(parts))
        })
    }

    /// The loss and its gradient in one go, without autograd: returns the
    /// outputs (no graph attached) and the gradient of
    /// [`SeesawOutput::total`] with respect to `cls_score` (same shape and
    /// kind). The counts take the batch as in [`forward`](SeesawLoss::forward).
    ///
    /// On the fused path one pass per row computes both, reading the logits
    /// once and writing the gradient once; on the reference path (f64 scores,
    /// or [`Backend::Reference`]) autograd runs inside the call. Use it when
    /// the scores come from outside libtorch's graph, or to feed the gradient
    /// to `Tensor::backward` of an upstream tensor yourself.
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(5))?;
    /// let scores = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
    /// let labels = Tensor::randint(5, [8], (Kind::Int64, Device::Cpu));
    /// let (out, grad) = loss.forward_backward(&scores, &labels, None, None)?;
    /// assert_eq!(grad.size(), [8, 5]);
    /// // Softmax gradients: each row sums to zero.
    /// assert!(grad.sum_dim_intlist(1, false, Kind::Float).abs().max().double_value(&[]) < 1e-6);
    /// assert!(out.classes.double_value(&[]) > 0.0);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn forward_backward(
        &mut self,
        cls_score: &Tensor,
        labels: &Tensor,
        label_weights: Option<&Tensor>,
        avg_factor: Option<f64>,
    ) -> Result<(SeesawOutput, Tensor)> {
        let reduction = self.config.reduction;
        self.forward_backward_with_reduction(cls_score, labels, label_weights, avg_factor, reduction)
    }

    /// [`forward_backward`](SeesawLoss::forward_backward) with an explicit
    /// reduction, as [`forward_with_reduction`](SeesawLoss::forward_with_reduction)
    /// takes it. With [`Reduction::None`] the gradient is that of the sum of
    /// every output element.
    ///
    /// ```
    /// use seesaw_loss::{Reduction, SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(5))?;
    /// let scores = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
    /// let labels = Tensor::randint(5, [8], (Kind::Int64, Device::Cpu));
    /// let (out, grad) = loss.forward_backward_with_reduction(&scores, &labels, None, None, Reduction::Sum)?;
    /// assert_eq!(out.classes.size(), Vec::<i64>::new());
    /// assert_eq!(grad.size(), [8, 5]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn forward_backward_with_reduction(
        &mut self,
        cls_score: &Tensor,
        labels: &Tensor,
        label_weights: Option<&Tensor>,
        avg_factor: Option<f64>,
        reduction: Reduction,
    ) -> Result<(SeesawOutput, Tensor)> {
        let inputs = Inputs {
            cls_score,
            labels,
            label_weights,
            avg_factor,
            reduction,
        };
        self.run(inputs, |call, fused| {
            let (parts, grad) = if fused {
                fused::forward_backward(call)?
            } else {
                reference_forward_backward(call)?
            };
            Ok((SeesawOutput::from(parts), grad))
        })
    }

    /// One call in the order of the type's documentation: checks (an error
    /// changes nothing), the count update, then `compute` with the call and
    /// whether it takes the fused path; an error of `compute` takes the batch
    /// back out of the counts. With a count hook, a call that fails before
    /// the collective joins it with an empty histogram.
    fn run<T>(&mut self, inputs: Inputs, compute: impl FnOnce(&Call, bool) -> Result<T>) -> Result<T> {
        let mut joined = false;
        let outcome = self.run_once(inputs, &mut joined, compute);
        if outcome.is_err() && !joined {
            if let Some(sync) = self.sync.as_mut() {
                // The other ranks' labels still reach this rank's counts, so
                // that every rank keeps the same counts. The call's error is
                // what the caller needs: a failure here would only hide it.
                if let Ok(others) = join_with_nothing(sync.as_mut(), self.counts.raw()) {
                    let _ = self.counts.add_histogram(&others, 1);
                }
            }
        }
        outcome
    }

    /// Sums `histogram` over the ranks (noting that this call joined the
    /// collective) and adds it to the counts.
    fn count_globally(&mut self, histogram: &mut Tensor, joined: &mut bool) -> Result<()> {
        if let Some(sync) = self.sync.as_mut() {
            *joined = true;
            sync.sum_over_ranks(histogram)?;
            self.counts.add_histogram(histogram, 1)?;
        }
        Ok(())
    }

    fn run_once<T>(
        &mut self,
        inputs: Inputs,
        joined: &mut bool,
        compute: impl FnOnce(&Call, bool) -> Result<T>,
    ) -> Result<T> {
        let Inputs {
            cls_score,
            labels,
            label_weights,
            avg_factor,
            reduction,
        } = inputs;
        let config = &self.config;
        let rows = inputs::check_scores(config, cls_score)?;
        let device = cls_score.device();
        let labels = inputs::check_labels(labels, rows, device)?;
        let compute_kind = inputs::compute_kind(cls_score.kind());
        let weights = inputs::check_weights(label_weights, rows, device, compute_kind)?;
        inputs::check_reduction(reduction, avg_factor)?;
        self.counts.check_layout(device)?;
        let use_fused = self.choose_backend(cls_score)?;
        let runs_on_kernels = use_fused && fused::runs_on_kernels(device);
        let checks = config.checks_for(runs_on_kernels);
        // An earlier call's bad batch that the device has reported since.
        self.report_deferred()?;
        let config = &self.config;
        // Immediate checks read the batch back to the host (free on the
        // CPU). The reference path always checks so (its index operations
        // would fault on a bad label), and so does a call on counts that a
        // checkpoint left in a floating kind, before they become int64.
        let floating_counts = self.counts.raw().kind() != Kind::Int64;
        if !use_fused || floating_counts || (runs_on_kernels && checks == Checks::Immediate) {
            let report = inputs::inspect(&labels, Some(self.counts.raw()), weights.as_ref())?;
            inputs::check_label_range(config, report.label_range)?;
            if report.bad_weights {
                return Err(Error::Weight {
                    row: None,
                    earlier_call: false,
                });
            }
            if report.bad_counts {
                return Err(Error::Counts(
                    "cum_samples holds NaN, infinite, fractional or negative counts, or counts this batch \
                     would take past int64 (from a checkpoint?); the counts were left as they are"
                        .into(),
                ));
            }
        }
        self.counts.normalize()?;
        let params = SeesawParams::new(config, &cls_score.size(), reduction, avg_factor);
        if !use_fused {
            // From here on the inputs are known good: the counts take the
            // batch (summed over the ranks with a hook).
            let mut histogram = None;
            if self.sync.is_some() {
                let mut h = self.counts.histogram(&labels)?;
                self.count_globally(&mut h, joined)?;
                histogram = Some(h);
            } else {
                self.counts.add(&labels, 1)?;
            }
            let config = &self.config;
            let log_counts = self.counts.log_counts(config.num_classes(), compute_kind)?;
            let call = Call::new(config, params, cls_score, labels, weights, log_counts, None);
            return compute(&call, false).map_err(|e| {
                let undo = match &histogram {
                    Some(h) => self.counts.add_histogram(h, -1),
                    None => self.counts.add(&call.labels, -1),
                };
                undone(e, undo)
            });
        }

        // The fused paths check, count and prepare in one step; a bad batch
        // changes nothing and is reported now or later as configured. With a
        // hook they count into the step's histogram, which is summed over the
        // ranks and then added to the counts, and the class table is made
        // again from the counts (a prepare step over no rows).
        let mut histogram = match self.sync {
            Some(_) => Some(Tensor::f_zeros_like(self.counts.raw())?),
            None => None,
        };
        let prepared = fused::prepare(
            &params,
            &labels,
            weights.as_ref(),
            self.counts.raw(),
            histogram.as_ref(),
            &mut self.fused,
        )?;
        let counted = prepared.bad.is_none();
        if let Some(bad) = prepared.bad {
            match checks {
                Checks::Immediate => return Err(bad.into_error(config, false)),
                Checks::Deferred => self.pending = Some(bad),
            }
        }
        let mut log_counts = prepared.log_counts;
        if let Some(h) = histogram.as_mut() {
            self.count_globally(h, joined)?;
            let no_rows = Tensor::f_empty([0], (Kind::Int64, device))?;
            let table = fused::prepare(&params, &no_rows, None, self.counts.raw(), None, &mut self.fused);
            log_counts = match table {
                Ok(table) => table.log_counts,
                Err(e) => return Err(undone(e.into(), self.counts.add_histogram(h, -1))),
            };
        }
        let config = &self.config;
        let call = Call::new(
            config,
            params,
            cls_score,
            labels,
            weights,
            log_counts,
            Some(prepared.state),
        );
        compute(&call, true).map_err(|e| {
            // The kernel's rollback skips a batch its prepare step found bad.
            let undo = if let Some(h) = &histogram {
                self.counts.add_histogram(h, -1)
            } else if runs_on_kernels {
                fused::cuda::add_counts(self.counts.raw(), &call.labels, -1, call.state.as_ref()).map_err(Error::from)
            } else if counted {
                self.counts.add(&call.labels, -1)
            } else {
                Ok(())
            };
            undone(e, undo)
        })
    }

    /// Returns the error of an earlier call's bad batch that has been found
    /// since (and forgets it), without waiting for the device.
    fn report_deferred(&mut self) -> Result<()> {
        let found = self
            .pending
            .take()
            .or_else(|| self.fused.record.as_mut().and_then(ErrorRecord::take));
        match found {
            Some(bad) => Err(bad.into_error(&self.config, true)),
            None => Ok(()),
        }
    }

    /// Waits for the device to finish this loss's calls, then returns the
    /// error of a bad batch among them, if any (see [`Checks::Deferred`]);
    /// the next call would have returned it. Calls under
    /// [`Checks::Immediate`] never leave one.
    ///
    /// ```
    /// use seesaw_loss::{Checks, SeesawConfig, SeesawLoss};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let config = SeesawConfig::classification(3).checks(Checks::Deferred);
    /// let mut loss = SeesawLoss::new(vs.root(), config)?;
    /// let scores = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    /// // Label 7 is out of range: the call changes nothing and its loss is NaN.
    /// let out = loss.forward(&scores, &Tensor::from_slice(&[0i64, 7]), None, None)?;
    /// assert!(out.classes.double_value(&[]).is_nan());
    /// let err = loss.check().unwrap_err();
    /// assert!(err.to_string().contains("found label 7 at row 1"), "{err}");
    /// assert_eq!(Vec::<i64>::try_from(loss.cum_samples()?)?, [0, 0, 0]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn check(&mut self) -> Result<()> {
        if let Device::Cuda(ordinal) = self.counts.raw().device() {
            crate::probe::host_read();
            tch::Cuda::synchronize(ordinal as i64);
        }
        self.report_deferred()
    }

    /// Whether this call takes the fused path.
    fn choose_backend(&self, cls_score: &Tensor) -> Result<bool> {
        let choice = self.path_for(cls_score.device(), cls_score.kind())?;
        Ok(choice.path != ComputePath::Reference)
    }

    /// Which implementation computes a call with scores of `kind` on
    /// `device`, and why: the configured [`Backend`] and what this machine
    /// has. On a CUDA device the first ask compiles the kernels (or reads
    /// them from the on-disk cache); a failure is remembered for the
    /// process, logged once as a warning, and under [`Backend::Auto`] sends
    /// calls to the reference path. With [`Backend::Fused`] it is the error.
    ///
    /// ```
    /// use seesaw_loss::{ComputePath, SeesawConfig, SeesawLoss};
    /// use tch::{Device, Kind};
    /// let vs = tch::nn::VarStore::new(Device::Cpu);
    /// let loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(80))?;
    /// assert_eq!(loss.path_for(Device::Cpu, Kind::Float)?.path, ComputePath::CpuMirror);
    /// let f64_path = loss.path_for(Device::Cpu, Kind::Double)?;
    /// assert_eq!(f64_path.path, ComputePath::Reference);
    /// println!("{}", f64_path.reason);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn path_for(&self, device: Device, kind: Kind) -> Result<PathChoice> {
        let fused = || {
            if fused::runs_on_kernels(device) {
                ComputePath::CudaKernel
            } else {
                ComputePath::CpuMirror
            }
        };
        Ok(match (self.config.backend, fused::unsupported(device, kind)) {
            (Backend::Reference, _) => PathChoice {
                path: ComputePath::Reference,
                reason: "Backend::Reference was configured".into(),
            },
            (Backend::Fused, Some(why)) => return Err(why),
            (Backend::Auto, Some(why)) => PathChoice {
                path: ComputePath::Reference,
                reason: format!("Backend::Auto falls back: {why}"),
            },
            (_, None) => {
                let path = fused();
                let reason = match path {
                    ComputePath::CudaKernel if device == Device::Cpu => {
                        "the kernels are emulated on the host (testing)"
                    }
                    ComputePath::CudaKernel => "CUDA scores of a kind the kernels take, and the kernels are loaded",
                    _ => "CPU scores of a kind the CPU mirror takes",
                };
                PathChoice {
                    path,
                    reason: reason.into(),
                }
            }
        })
    }

    /// The cumulative counts (a copy): `C + 1` entries for detection
    /// (background last), `C` for classification.
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(80))?;
    /// assert_eq!(loss.cum_samples()?.size(), [81]);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn cum_samples(&self) -> Result<Tensor> {
        self.counts.snapshot()
    }

    /// Width of `cls_score` this loss takes: `C + 2` or `C`.
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// assert_eq!(SeesawLoss::new(vs.root(), SeesawConfig::detection(80))?.cls_channels(), 82);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn cls_channels(&self) -> i64 {
        self.config.cls_channels()
    }

    /// Inference scores. Detection: `[N, C+1]` = `[softmax(classes) *
    /// p_fg, p_bg]` with `(p_fg, p_bg) = softmax(objectness)`, as
    /// mmdetection's `get_activation`. Classification: `softmax(cls_score)`.
    /// Computed in f32 (f64 for f64 scores).
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// use tch::{Device, Kind, Tensor};
    /// let vs = tch::nn::VarStore::new(Device::Cpu);
    /// let loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3))?;
    /// let scores = loss.activation(&Tensor::randn([2, 5], (Kind::Float, Device::Cpu)))?;
    /// assert_eq!(scores.size(), [2, 4]);
    /// // Each row is a distribution over the C classes and background.
    /// assert!((scores.sum_dim_intlist(1, false, Kind::Float) - 1.0).abs().max().double_value(&[]) < 1e-6);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn activation(&self, cls_score: &Tensor) -> Result<Tensor> {
        inputs::check_scores(&self.config, cls_score)?;
        let kind = inputs::compute_kind(cls_score.kind());
        let x = cls_score.f_to_kind(kind)?;
        let c = self.config.num_classes();
        Ok(match self.config.head() {
            Head::Classification => x.f_softmax(1, kind)?,
            Head::Detection => {
                let classes = x.f_narrow(1, 0, c)?.f_softmax(1, kind)?;
                let objectness = x.f_narrow(1, c, 2)?.f_softmax(1, kind)?;
                let foreground = classes.f_mul(&objectness.f_narrow(1, 0, 1)?)?;
                Tensor::f_cat(&[foreground, objectness.f_narrow(1, 1, 1)?], 1)?
            }
        })
    }

    /// Top-1 accuracies in percent (mmdetection's `get_accuracy`): classes over
    /// positive rows, objectness over all rows. Reads the results to the host.
    ///
    /// ```
    /// use seesaw_loss::{SeesawConfig, SeesawLoss};
    /// use tch::Tensor;
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3))?;
    /// let scores = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 0.0, 0.0, 3.0]).view([2, 3]);
    /// let acc = loss.accuracy(&scores, &Tensor::from_slice(&[0i64, 1]))?;
    /// assert_eq!(acc.classes, 50.0);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn accuracy(&self, cls_score: &Tensor, labels: &Tensor) -> Result<SeesawAccuracy> {
        let config = &self.config;
        let rows = inputs::check_scores(config, cls_score)?;
        let labels = inputs::check_labels(labels, rows, cls_score.device())?;
        inputs::check_label_range(config, inputs::inspect(&labels, None, None)?.label_range)?;
        let _guard = tch::no_grad_guard();
        let c = config.num_classes();
        Ok(match config.head() {
            Head::Classification => SeesawAccuracy {
                classes: top1_percent(cls_score, &labels)?,
                objectness: None,
            },
            Head::Detection => {
                crate::probe::host_read();
                let positive = labels.f_lt(c)?.f_nonzero()?.f_squeeze_dim(1)?;
                let classes = top1_percent(
                    &cls_score.f_narrow(1, 0, c)?.f_index_select(0, &positive)?,
                    &labels.f_index_select(0, &positive)?,
                )?;
                let background = labels.f_eq(c)?.f_to_kind(Kind::Int64)?;
                let objectness = top1_percent(&cls_score.f_narrow(1, c, 2)?, &background)?;
                SeesawAccuracy {
                    classes,
                    objectness: Some(objectness),
                }
            }
        })
    }
}

impl From<Parts> for SeesawOutput {
    fn from(parts: Parts) -> Self {
        SeesawOutput {
            classes: parts.classes,
            objectness: parts.objectness,
        }
    }
}

/// The error of a call whose batch was taken back out of the counts by
/// `undo`; when that failed too, the error says both.
/// What a forward call was given.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    cls_score: &'a Tensor,
    labels: &'a Tensor,
    label_weights: Option<&'a Tensor>,
    avg_factor: Option<f64>,
    reduction: Reduction,
}

/// Joins the ranks' collective with an empty histogram (for a call that
/// failed before it); returns the other ranks' sum.
fn join_with_nothing(sync: &mut dyn CountSync, counts: &Tensor) -> Result<Tensor> {
    let mut nothing = Tensor::f_zeros([counts.numel() as i64], (Kind::Int64, counts.device()))?;
    sync.sum_over_ranks(&mut nothing)?;
    Ok(nothing)
}

fn undone(e: Error, undo: Result<()>) -> Error {
    match undo {
        Ok(()) => e,
        Err(undo) => Error::Internal(format!(
            "{e}; taking the batch back out of the counts failed too ({undo}): the counts may hold it"
        )),
    }
}

/// [`SeesawLoss::forward_backward`] on the reference path: autograd on a
/// detached copy of the scores.
fn reference_forward_backward(call: &Call) -> Result<(Parts, Tensor)> {
    let leaf = call.scores.f_detach()?.set_requires_grad(true);
    let parts = reference::forward(&call.with_scores(leaf.shallow_clone()))?;
    let output = SeesawOutput::from(parts);
    let grad = Tensor::f_run_backward(&[output.f_total()?], &[&leaf], false, false)?
        .pop()
        .ok_or_else(|| Error::Internal("autograd returned no gradient for the scores".into()))?;
    let detached = Parts {
        classes: output.classes.f_detach()?,
        objectness: output.objectness.map(|o| o.f_detach()).transpose()?,
    };
    Ok((detached, grad))
}

/// Percentage of rows whose arg-max is the label; 0 for no rows.
fn top1_percent(scores: &Tensor, labels: &Tensor) -> Result<f64> {
    let rows = scores.size()[0];
    if rows == 0 {
        return Ok(0.0);
    }
    crate::probe::host_read();
    let correct = scores
        .f_argmax(1, false)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    Ok(correct as f64 * 100.0 / rows as f64)
}
