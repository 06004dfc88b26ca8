//! Where a CPU training step's time goes: the fused step, its loss pass
//! alone, its backward alone, `forward_backward`, cross-entropy's step and
//! loss, and plain memory operations over a tensor of the logits' size (one
//! read; one fresh write; one read and one write, into an existing tensor
//! and into a fresh one; the fused step's unavoidable traffic,
//! `common::traffic_floor_step`, and its second half alone). The
//! operations alternate round by round in one process, so a machine that
//! slows down slows all of them alike; medians are reported.
//!
//! `cargo bench --bench step_parts` measures LVIS detection at N = 4096;
//! `cargo bench --bench step_parts -- imagenet-lt:4096` picks a shape
//! (`name:rows`, from `benches/common`); `--threads=1` runs it on one
//! thread. `SEESAW_BENCH_QUICK=1` takes few rounds (a smoke run). Freed
//! blocks stay in the heap, as in `step_ratio` (`common::steady_heap`).

mod common;

use seesaw_loss::{Backend, SeesawLoss};
use std::time::Duration;
use tch::{nn, Device, Kind};

/// Where "fused step's backward alone" is in [`PARTS`].
const BACKWARD_ALONE: usize = 2;

/// Where the traffic floor's second half alone is in [`PARTS`]: the
/// counterpart of [`BACKWARD_ALONE`], its read run before the clock starts.
const FLOOR_WRITE_ALONE: usize = 11;

/// The operations measured, in the order each round runs them.
const PARTS: [&str; 12] = [
    "fused step (forward, backward through autograd)",
    "fused loss pass alone (no_grad)",
    "fused step's backward alone (its forward untimed)",
    "forward_backward (both passes per row, no autograd)",
    "cross-entropy step",
    "cross-entropy loss alone (no_grad)",
    "reading the logits once (sum)",
    "writing a fresh tensor (empty_like().fill_)",
    "copy_ into an existing tensor",
    "copy() into a fresh tensor",
    "the step's traffic alone (sum, then mul into fresh)",
    "its second half alone (mul; the sum untimed)",
];

fn main() {
    common::steady_heap();
    println!("machine: {}", common::machine::describe());
    let quick = std::env::var("SEESAW_BENCH_QUICK").is_ok_and(|v| v == "1");
    let pick = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "lvis-det:4096".into());
    let shape = common::named(&pick);
    // `--threads=N` sets libtorch's intra-op threads, which the fused
    // passes share: with one, the loss pass's arithmetic per row is what
    // is measured rather than two cores' memory.
    if let Some(threads) = std::env::args().find_map(|a| a.strip_prefix("--threads=").map(str::to_owned)) {
        tch::set_num_threads(threads.parse().expect("--threads=N takes a number"));
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root() / "loss", shape.config(Backend::Fused)).expect("a valid config");
    let (scores, labels) = shape.inputs(1, Kind::Float, Device::Cpu).swap_remove(0);
    let mut target = scores.copy();
    let (warm_up, rounds) = if quick { (2, 5) } else { (20, 380) };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); PARTS.len()];
    for round in 0..warm_up + rounds {
        for (part, samples) in times.iter_mut().enumerate() {
            // The backward-alone part's forward runs before its clock starts.
            let forward_done =
                (part == BACKWARD_ALONE).then(|| common::seesaw_step_forward(&mut loss, &scores, &labels));
            if part == FLOOR_WRITE_ALONE {
                common::traffic_floor_read(&scores);
            }
            let elapsed = common::timed(|| match part {
                0 => common::seesaw_step(&mut loss, &scores, &labels),
                1 => drop(tch::no_grad(|| {
                    loss.forward(&scores, &labels, None, None).expect("a valid call")
                })),
                BACKWARD_ALONE => forward_done.expect("made above for this part").backward(),
                3 => drop(
                    loss.forward_backward(&scores, &labels, None, None)
                        .expect("a valid call"),
                ),
                4 => common::cross_entropy_step(&scores, &labels),
                5 => drop(tch::no_grad(|| scores.cross_entropy_for_logits(&labels))),
                6 => common::traffic_floor_read(&scores),
                7 => drop(scores.empty_like().fill_(1.0)),
                8 => target.copy_(&scores),
                9 => drop(scores.copy()),
                10 => common::traffic_floor_step(&scores),
                FLOOR_WRITE_ALONE => common::traffic_floor_write(&scores),
                _ => unreachable!("one arm per part"),
            });
            if round >= warm_up {
                samples.push(elapsed);
            }
        }
    }
    println!(
        "{}/N={} ({} rounds, {} threads), medians:",
        shape.name,
        shape.rows,
        rounds,
        tch::get_num_threads()
    );
    for (name, samples) in PARTS.iter().zip(times) {
        println!("  {name:<52} {:>9.1} us", common::median(samples).as_secs_f64() * 1e6);
    }
}
