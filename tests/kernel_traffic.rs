//! The bytes the row kernels move, counted by the host emulator (feature
//! `testing`): each logit is read once and each gradient element written
//! once, at odd and even widths, in every storage kind and in both layouts,
//! up to what the rows and the class table add (O(N + C)).
//!
//! One test: the emulator's traffic log is process-wide.
#![cfg(feature = "testing")]

use seesaw_loss::testing::{self, KernelTraffic};
use seesaw_loss::{SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// Arguments of the row kernels (kernels/seesaw.cu): the parameter block is
/// argument 0, the logits 1, the gradient (backward, forward_backward) 2.
const LOGITS: usize = 1;
const GRAD: usize = 2;

/// What a launch may move besides the logits and the gradient: per row its
/// label, weight, upstream factor, statistics and outputs (well under 64
/// bytes), and per block the class table it stages (8 bytes per class at
/// most), the blocks being the device's resident ones.
fn allowance(rows: i64, classes: i64, grid: u32) -> u64 {
    (64 * rows + 8 * classes * grid as i64) as u64
}

struct Case {
    detection: bool,
    classes: i64,
    kind: Kind,
}

impl Case {
    fn width(&self) -> i64 {
        if self.detection {
            self.classes + 2
        } else {
            self.classes
        }
    }

    fn name(&self) -> String {
        format!(
            "{} C={} {:?}",
            if self.detection { "det" } else { "cls" },
            self.classes,
            self.kind
        )
    }
}

/// The one launch of `kernel_prefix` in `launches`.
fn launch_of<'a>(launches: &'a [KernelTraffic], kernel_prefix: &str) -> &'a KernelTraffic {
    let found: Vec<&KernelTraffic> = launches
        .iter()
        .filter(|t| t.kernel.starts_with(kernel_prefix) && !t.kernel[kernel_prefix.len()..].contains("backward"))
        .collect();
    assert_eq!(found.len(), 1, "launches of {kernel_prefix}: {launches:?}");
    found[0]
}

/// Checks one row-kernel launch and returns a line of the table the test
/// prints: bytes read from the logits, read in all and written in all, over
/// the logits' bytes.
fn check(case: &Case, rows: i64, t: &KernelTraffic, writes_grad: bool) -> String {
    let elt = case.kind.elt_size_in_bytes() as u64;
    let matrix = rows as u64 * case.width() as u64 * elt;
    let extra = allowance(rows, case.classes, t.grid);
    let read: u64 = t.read.iter().sum();
    let written: u64 = t.written.iter().sum();
    let name = format!("{} {}", t.kernel, case.name());
    // Each logit once, plus per row the objectness logits and the label's
    // logit once per warp of the row (one warp, or the block's 8).
    let per_row = 2 + if t.kernel.ends_with("_block") { 8 } else { 1 };
    assert!(
        t.read[LOGITS] <= matrix + per_row * rows as u64 * elt,
        "{name}: read {} bytes of {matrix} bytes of logits",
        t.read[LOGITS]
    );
    assert!(
        read as f64 <= 1.02 * matrix as f64 + extra as f64,
        "{name}: read {read} bytes in all for {matrix} bytes of logits"
    );
    if writes_grad {
        assert_eq!(t.written[GRAD], matrix, "{name}: gradient bytes written");
        assert!(
            written as f64 <= 1.02 * matrix as f64 + extra as f64,
            "{name}: wrote {written} bytes in all for a {matrix}-byte gradient"
        );
    } else {
        assert!(written <= extra, "{name}: the loss pass wrote {written} bytes");
    }
    let ratio = |bytes: u64| bytes as f64 / matrix as f64;
    format!(
        "{:<34} {:<18} logits read {:.4}x, all reads {:.4}x, all writes {:.4}x",
        t.kernel,
        case.name(),
        ratio(t.read[LOGITS]),
        ratio(read),
        ratio(written)
    )
}

#[test]
fn row_kernels_read_each_logit_once_and_write_each_gradient_element_once() {
    testing::emulate_kernels();
    let rows = 300;
    let mut table = Vec::new();
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        // LVIS's detection head (1205 columns), even and odd classification
        // widths, all in the warp layout; and 4096 classes, past a warp's
        // registers, in the block layout.
        for (detection, classes) in [(true, 1203), (false, 1204), (false, 1205), (false, 4096)] {
            let case = Case {
                detection,
                classes,
                kind,
            };
            tch::manual_seed(classes);
            let high = if detection { classes + 1 } else { classes };
            let labels = Tensor::randint(high, [rows], (Kind::Int64, Device::Cpu));
            let weights = Tensor::rand([rows], (Kind::Float, Device::Cpu)) + 0.5;
            let scores = (Tensor::randn([rows, case.width()], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let config = if detection {
                SeesawConfig::detection(classes)
            } else {
                SeesawConfig::classification(classes)
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let mut loss = SeesawLoss::new(vs.root(), config).unwrap();

            let _ = testing::take_kernel_traffic();
            let _ = loss.forward_backward(&scores, &labels, Some(&weights), None).unwrap();
            let launches = testing::take_kernel_traffic();
            let fb = launch_of(&launches, "seesaw_forward_backward_");
            table.push(check(&case, rows, fb, true));

            let leaf = scores.detach().set_requires_grad(true);
            loss.forward(&leaf, &labels, Some(&weights), None)
                .unwrap()
                .total()
                .backward();
            let launches = testing::take_kernel_traffic();
            let forward = launch_of(&launches, "seesaw_forward_");
            table.push(check(&case, rows, forward, false));
            let backward = launch_of(&launches, "seesaw_backward_");
            table.push(check(&case, rows, backward, true));
        }
    }
    println!("bytes moved over the logits' bytes, {rows} rows:\n{}", table.join("\n"));
}
