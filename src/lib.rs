//! Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance
//! Segmentation", CVPR 2021) for tch.
//!
//! Seesaw is a softmax cross-entropy whose negative gradients are rebalanced
//! per class pair: a *mitigation* factor stops frequent classes from drowning
//! rare ones in negative gradient, and a *compensation* factor keeps false
//! positives of rare classes in check. The crate gives the exact semantics of
//! the Python implementations (mmdetection's detection head with `C + 2`
//! outputs, mmpretrain's classifier) with:
//!
//! - a pure-libtorch path ([`Backend::Reference`]) that runs anywhere;
//! - a fused path ([`Backend::Fused`]): one pass per row computes the loss and
//!   the gradient together, as a CUDA kernel on CUDA tensors and as a
//!   multi-threaded CPU mirror of that kernel on CPU tensors.
//!
//! ```
//! use seesaw_loss::{SeesawConfig, SeesawLoss};
//! use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let head = nn::linear(vs.root() / "head", 16, 10 + 2, Default::default());
//! let mut loss = SeesawLoss::new(vs.root() / "loss", SeesawConfig::detection(10))?;
//! let mut opt = nn::Sgd::default().build(&vs, 0.1)?;
//!
//! let features = Tensor::randn([32, 16], (Kind::Float, Device::Cpu));
//! let labels = Tensor::randint(11, [32], (Kind::Int64, Device::Cpu)); // 10 = background
//! let out = loss.forward(&features.apply(&head), &labels, None, None)?;
//! opt.backward_step(&out.total());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Where things are: what the loss computes, point by point, in
//! `docs/semantics.md`; the row algorithm and its log-space derivation in
//! `src/math.rs` (documented in the source); the kernels in
//! `kernels/seesaw.cu`, and how they map the math and the memory floor in
//! `docs/kernels.md`; the CUDA plumbing in [`cuda`] (`src/fused/`); the
//! libtorch path in `src/reference.rs`; the public type in [`SeesawLoss`];
//! errors in [`Error`].

#![deny(missing_docs)]

mod autograd;
mod call;
mod config;
mod count_sync;
mod counts;
mod deferred;
mod error;
mod functional;
mod fused;
mod inputs;
mod loss;
mod math;
#[cfg(feature = "nccl")]
mod nccl;
mod normed_linear;
mod params;
mod probe;
mod reference;
#[cfg(feature = "testing")]
pub mod testing;

pub mod link;

pub use config::{Backend, Checks, Head, Reduction, SeesawConfig};
pub use count_sync::CountSync;
pub use error::{Error, Result};
pub use functional::seesaw_ce_loss;
pub use fused::cuda;
pub use loss::{ComputePath, PathChoice, SeesawAccuracy, SeesawLoss, SeesawOutput};
#[cfg(feature = "nccl")]
pub use nccl::{NcclCountSync, NcclUniqueId};
pub use normed_linear::{NormedLinear, NormedLinearConfig};

/// The README's Rust example compiles and runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
