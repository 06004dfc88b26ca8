//! [`NormedLinear`]: mmdetection's cosine classifier, which its Seesaw
//! configurations put in front of the loss (`cls_predictor_cfg =
//! dict(type='NormedLinear', tempearture=20)`).

use std::borrow::Borrow;

use tch::{nn, Tensor};

use crate::error::{Error, Result};

/// Settings of a [`NormedLinear`], mmdetection's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormedLinearConfig {
    /// Scale of the cosine similarities (default 20).
    pub temperature: f64,
    /// Power of the norms the inputs and weights are divided by (default 1).
    pub power: f64,
    /// Added to each raised norm before dividing (default 1e-6), as
    /// mmdetection does: a zero row gives zeros, not NaN.
    pub eps: f64,
    /// Whether to add a bias (default true, as `nn.Linear`'s; initialised to 0).
    pub bias: bool,
}

impl Default for NormedLinearConfig {
    fn default() -> Self {
        NormedLinearConfig {
            temperature: 20.0,
            power: 1.0,
            eps: 1e-6,
            bias: true,
        }
    }
}

/// A linear layer on L2-normalised inputs and per-class weights:
/// `temperature * (x / (|x|^power + eps)) . (w_c / (|w_c|^power + eps)) + b_c`.
/// Weights start as N(0, 0.01), the bias at 0, as mmdetection initialises
/// them. Its outputs are the logits for either head ([`SeesawConfig::detection`]'s
/// `C + 2` or [`SeesawConfig::classification`]'s `C`).
///
/// [`SeesawConfig::detection`]: crate::SeesawConfig::detection
/// [`SeesawConfig::classification`]: crate::SeesawConfig::classification
///
/// ```
/// use seesaw_loss::{NormedLinear, NormedLinearConfig};
/// use tch::{nn, nn::Module, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let head = NormedLinear::new(vs.root() / "cls", 16, 10 + 2, NormedLinearConfig::default())?;
/// let logits = head.forward(&Tensor::randn([4, 16], (Kind::Float, Device::Cpu)));
/// assert_eq!(logits.size(), [4, 12]);
/// // Cosines times 20, plus a zero bias: within [-20, 20].
/// assert!(logits.abs().max().double_value(&[]) <= 20.0 + 1e-4);
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
#[derive(Debug)]
pub struct NormedLinear {
    /// `[out, in]` per-class weights.
    pub weight: Tensor,
    /// `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
    config: NormedLinearConfig,
}

impl NormedLinear {
    /// A layer from `in_dim` features to `out_dim` logits, its variables
    /// (`weight`, `bias`) under `path`. Dimensions below 1 are a
    /// configuration error; a failed allocation is an error too.
    ///
    /// ```
    /// use seesaw_loss::{NormedLinear, NormedLinearConfig};
    /// use tch::{nn, Device};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// assert!(NormedLinear::new(vs.root(), 0, 3, NormedLinearConfig::default()).is_err());
    /// ```
    pub fn new<'a, P: Borrow<nn::Path<'a>>>(
        path: P,
        in_dim: i64,
        out_dim: i64,
        config: NormedLinearConfig,
    ) -> Result<Self> {
        if in_dim < 1 || out_dim < 1 {
            return Err(Error::Config(format!(
                "NormedLinear needs at least one input and one output, got {in_dim} -> {out_dim}"
            )));
        }
        let path = path.borrow();
        let weight = path.f_var("weight", &[out_dim, in_dim], nn::Init::Randn { mean: 0.0, stdev: 0.01 })?;
        let bias = match config.bias {
            true => Some(path.f_var("bias", &[out_dim], nn::Init::Const(0.0))?),
            false => None,
        };
        Ok(NormedLinear { weight, bias, config })
    }

    /// The settings the layer was made with.
    pub fn config(&self) -> &NormedLinearConfig {
        &self.config
    }

    /// [`nn::Module::forward`] as a `Result`: a wrong width or a libtorch
    /// failure is an error, not a panic.
    ///
    /// ```
    /// use seesaw_loss::{NormedLinear, NormedLinearConfig};
    /// use tch::{nn, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let head = NormedLinear::new(vs.root(), 8, 3, NormedLinearConfig::default())?;
    /// assert!(head.f_forward(&Tensor::zeros([2, 5], (Kind::Float, Device::Cpu))).is_err());
    /// # Ok::<(), seesaw_loss::Error>(())
    /// ```
    pub fn f_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let in_dim = self.weight.size()[1];
        let shape = xs.size();
        if shape.last() != Some(&in_dim) {
            return Err(Error::Shape(format!(
                "NormedLinear takes [.., {in_dim}] inputs, got shape {shape:?}"
            )));
        }
        let c = &self.config;
        let normed = |t: &Tensor| -> Result<Tensor> {
            let norm = t.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
            let divisor = norm.f_pow_tensor_scalar(c.power)?.f_add_scalar(c.eps)?;
            Ok(t.f_div(&divisor)?)
        };
        let x = normed(xs)?.f_mul_scalar(c.temperature)?;
        let w = normed(&self.weight)?;
        Ok(x.f_linear(&w, self.bias.as_ref())?)
    }
}

impl nn::Module for NormedLinear {
    /// Panics where [`NormedLinear::f_forward`] returns an error.
    fn forward(&self, xs: &Tensor) -> Tensor {
        match self.f_forward(xs) {
            Ok(out) => out,
            Err(e) => panic!("NormedLinear::forward: {e}"),
        }
    }
}
