//! The CPU training step of the fused path against plain cross-entropy's,
//! side by side in one process: the two steps alternate, so a machine that
//! slows down (a shared host, frequency changes) slows both alike, and the
//! ratio of their medians is what is reported, with the median and
//! quartiles of each pair's own ratio.
//!
//! `cargo bench --bench step_ratio` measures LVIS detection at N = 4096 and
//! N = 16; `cargo bench --bench step_ratio -- lvis-det:4096 imagenet-lt:4096`
//! picks shapes (`name:rows`, from `benches/common`). `SEESAW_BENCH_QUICK=1`
//! takes few samples (a smoke run). Freed blocks stay in the heap
//! (`common::steady_heap`; `SEESAW_BENCH_GLIBC_HEAP=1` leaves glibc's
//! defaults, under which the ratio follows glibc's trimming rather than the
//! steps). `--reference` also times the pure-libtorch path's step
//! (`Backend::Reference`), after the pairs: 15 to 20 times slower, it is
//! not interleaved with them. `--floor` adds a second pair to each round:
//! the step's unavoidable traffic alone (`common::traffic_floor_step`),
//! then cross-entropy's step again, so that it too follows a
//! cross-entropy step as the fused one does; it prints that floor's ratio
//! to cross-entropy and the fused step's to the floor.

mod common;

use common::{median, timed, Shape};
use seesaw_loss::{Backend, SeesawLoss};
use std::time::Duration;
use tch::{nn, Device, Kind};

/// The quartiles of `values`: first, median, third.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    [1, 2, 3].map(|q| values[(values.len() - 1) * q / 4])
}

/// The quartiles of the pairs' own ratios, `first[i] / second[i]`.
fn pair_quartiles(first: &[Duration], second: &[Duration]) -> [f64; 3] {
    quartiles(
        first
            .iter()
            .zip(second)
            .map(|(f, c)| f.as_secs_f64() / c.as_secs_f64())
            .collect(),
    )
}

fn measure(shape: &Shape, samples: usize, reference: bool, floor: bool) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root() / "loss", shape.config(Backend::Fused)).expect("a valid config");
    let (scores, labels) = shape.inputs(1, Kind::Float, Device::Cpu).swap_remove(0);
    // One round: the fused step and cross-entropy's, then with `floor` the
    // floor and cross-entropy's again; each step's time.
    let mut round = || {
        let fused = timed(|| common::seesaw_step(&mut loss, &scores, &labels));
        let cross = timed(|| common::cross_entropy_step(&scores, &labels));
        let floor = floor.then(|| {
            (
                timed(|| common::traffic_floor_step(&scores)),
                timed(|| common::cross_entropy_step(&scores, &labels)),
            )
        });
        (fused, cross, floor)
    };
    // Warm-up: every arm grows the heap to its steady size here, so that no
    // timed step faults fresh pages in.
    for _ in 0..3 {
        round();
    }
    let (mut fused, mut cross) = (Vec::new(), Vec::new());
    let (mut floors, mut floor_cross) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let (f, c, floor) = round();
        fused.push(f);
        cross.push(c);
        if let Some((f, c)) = floor {
            floors.push(f);
            floor_cross.push(c);
        }
    }
    // Each pair's two steps ran a few milliseconds apart, in the same phase
    // of the machine: their ratio follows a phase change within the run
    // that the ratio of the two medians can miss.
    let [low, pair_median, high] = pair_quartiles(&fused, &cross);
    let floor_line = floor.then(|| {
        let [low, pair_median, high] = pair_quartiles(&floors, &floor_cross);
        let over_floor = pair_quartiles(&fused, &floors)[1];
        format!(
            "{}/N={}: traffic floor {:.1} us, per pair {:.3} ({:.3}-{:.3} between quartiles) of cross-entropy; \
             fused over floor {:.3} (median of the rounds)",
            shape.name,
            shape.rows,
            median(floors).as_secs_f64() * 1e6,
            pair_median,
            low,
            high,
            over_floor,
        )
    });
    let (fused, cross) = (median(fused), median(cross));
    let reference = reference.then(|| {
        let mut loss =
            SeesawLoss::new(vs.root() / "reference", shape.config(Backend::Reference)).expect("a valid config");
        common::seesaw_step(&mut loss, &scores, &labels);
        median(
            (0..(samples / 20).max(5))
                .map(|_| timed(|| common::seesaw_step(&mut loss, &scores, &labels)))
                .collect(),
        )
    });
    println!(
        "{}/N={}: fused {:.1} us, cross-entropy {:.1} us, ratio {:.3}; per pair {:.3} ({:.3}-{:.3} between quartiles) \
         ({} pairs, {} threads)",
        shape.name,
        shape.rows,
        fused.as_secs_f64() * 1e6,
        cross.as_secs_f64() * 1e6,
        fused.as_secs_f64() / cross.as_secs_f64(),
        pair_median,
        low,
        high,
        samples,
        tch::get_num_threads(),
    );
    if let Some(line) = floor_line {
        println!("{line}");
    }
    if let Some(reference) = reference {
        println!(
            "{}/N={}: reference {:.1} us, {:.2}x cross-entropy's median",
            shape.name,
            shape.rows,
            reference.as_secs_f64() * 1e6,
            reference.as_secs_f64() / cross.as_secs_f64(),
        );
    }
}

fn main() {
    common::steady_heap();
    println!("machine: {}", common::machine::describe());
    let quick = std::env::var("SEESAW_BENCH_QUICK").is_ok_and(|v| v == "1");
    let reference = std::env::args().any(|a| a == "--reference");
    let floor = std::env::args().any(|a| a == "--floor");
    let mut picks: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if picks.is_empty() {
        picks = vec!["lvis-det:4096".into(), "lvis-det:16".into()];
    }
    for pick in picks {
        let shape = common::named(&pick);
        // About two seconds of steps per shape, at least 20 pairs.
        let per_pair = (shape.rows * shape.width()) as f64 * 1.5e-9;
        let samples = if quick {
            5
        } else {
            ((2.0 / per_pair) as usize).clamp(20, 2000)
        };
        measure(shape, samples, reference, floor);
    }
}
