use seesaw_loss::*;
use tch::{nn, Device, Kind, Tensor};
fn main() -> anyhow::Result<()> {
    tch::manual_seed(0);
    let mut x = Tensor::randn([64, 12], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let labels = Tensor::randint(11, [64], (Kind::Int64, Device::Cpu));
    let mut out = vec![];
    for b in [Backend::Reference, Backend::Fused] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(10).backend(b))?;
        for _ in 0..3 {
            loss.forward(&x, &labels, None, None)?;
        }
        x.zero_grad();
        let o = loss.forward(&x, &labels, None, None)?;
        o.total().backward();
        println!(
            "{b:?}: cls {} obj {}",
            o.classes.double_value(&[]),
            o.objectness.as_ref().unwrap().double_value(&[])
        );
        out.push(x.grad().copy());
    }
    println!("max grad diff {}", (&out[0] - &out[1]).abs().max().double_value(&[]));
    println!("cuda available {}", tch::Cuda::is_available());
    let ptx = cuda::compile_ptx(90)?;
    println!("ptx bytes {}", ptx.to_src().len());
    Ok(())
}
