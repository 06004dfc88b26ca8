//! Criterion benchmarks: one training step (forward + backward through
//! autograd) and forward alone, for the fused and reference paths and plain
//! cross-entropy as a yardstick, on CPU and on CUDA when libtorch sees a GPU.
//! Throughput is bytes of logits per second.
//!
//! `cargo bench --bench seesaw` runs everything; pass a filter to pick, for
//! example `cargo bench --bench seesaw -- "step/lvis-det/N=4096"`.
//! `SEESAW_BENCH_QUICK=1` keeps every measurement short (a smoke run).

mod common;

use common::{Shape, SHAPES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use seesaw_loss::{Backend, SeesawLoss};
use std::time::Duration;
use tch::{nn, Device, Kind, Tensor};

#[derive(Clone, Copy)]
enum Method {
    Fused,
    Reference,
    /// Plain softmax cross-entropy over the same logits: what the step would
    /// cost without Seesaw.
    CrossEntropy,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Fused => "fused",
            Method::Reference => "reference",
            Method::CrossEntropy => "cross-entropy",
        }
    }
}

fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        d.push(Device::Cuda(0));
    }
    d
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

struct Setup {
    _vs: nn::VarStore,
    loss: Option<SeesawLoss>,
    scores: Tensor,
    labels: Tensor,
}

fn setup(shape: &Shape, method: Method, device: Device, kind: Kind) -> Setup {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let loss = match method {
        Method::Fused => Some(Backend::Fused),
        Method::Reference => Some(Backend::Reference),
        Method::CrossEntropy => None,
    }
    .map(|b| SeesawLoss::new(vs.root() / "loss", shape.config(b)).expect("a valid config"));
    let (scores, labels) = shape.inputs(1, kind, device).swap_remove(0);
    Setup {
        _vs: vs,
        loss,
        scores,
        labels,
    }
}

impl Setup {
    fn value(&mut self, scores: &Tensor) -> Tensor {
        match &mut self.loss {
            Some(loss) => loss
                .forward(scores, &self.labels, None, None)
                .expect("a valid call")
                .total(),
            None => scores.cross_entropy_for_logits(&self.labels),
        }
    }
}

fn bench(c: &mut Criterion) {
    let quick = std::env::var("SEESAW_BENCH_QUICK").is_ok_and(|v| v == "1");
    for device in devices() {
        let dev = if device == Device::Cpu { "cpu" } else { "cuda" };
        for pass in ["step", "forward"] {
            let mut group = c.benchmark_group(format!("{pass}/{dev}"));
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(if quick { 100 } else { 500 }));
            group.measurement_time(Duration::from_secs(if quick { 1 } else { 3 }));
            for shape in SHAPES {
                let width = if shape.detection {
                    shape.classes + 2
                } else {
                    shape.classes
                };
                group.throughput(Throughput::Bytes((shape.rows * width * 4) as u64));
                for method in [Method::Fused, Method::Reference, Method::CrossEntropy] {
                    let id = BenchmarkId::new(format!("{}/N={}", shape.name, shape.rows), method.name());
                    group.bench_function(id, |b| {
                        let mut s = setup(shape, method, device, Kind::Float);
                        b.iter(|| {
                            if pass == "step" {
                                let x = s.scores.detach().set_requires_grad(true);
                                s.value(&x).backward();
                            } else {
                                let x = s.scores.shallow_clone();
                                let _ = tch::no_grad(|| s.value(&x));
                            }
                            sync(device);
                        })
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
