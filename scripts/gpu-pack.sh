#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here (no GPU needed) into
# gpu-pack/, stripped, with gpu-pack/run.sh to run them on a GPU machine that
# has PyTorch 2.11.0 but no Rust toolchain. With the device tool:
#   scripts/gpu-pack.sh            # here
#   run: bash gpu-pack/run.sh tests   # there, carry ["gpu-pack"]; then `bench`, then `peer`
# Each part fits one 10-minute device call (run.sh's header lists them).
# Results land in $OUT (or gpu-pack/out when $OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/libtorch-env.sh
seesaw_libtorch_env
rm -rf gpu-pack && mkdir -p gpu-pack
# Test binaries (the GPU tests, the NVRTC check, the autograd node) and the
# benchmark binaries (benches/gpu.rs, benches/seesaw.rs), plus the Python peer.
# Built with the test aids (feature testing): the GPU tests use them, and the
# GPU benchmark prints the launch and host-read counters.
{
    cargo test --release --features testing,nccl --no-run --test gpu --test kernel_source --test autograd --message-format=json
    cargo bench --features testing --no-run --bench gpu --bench seesaw --message-format=json
    cargo build --release --example long_tail --message-format=json
} 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"], ["example"]):
        prefix = "bench-" if m["target"]["kind"] == ["bench"] else ""
        shutil.copy(m["executable"], "gpu-pack/" + prefix + m["target"]["name"])
'
for f in gpu-pack/*; do strip --strip-debug "$f"; done
cp benches/peer/seesaw_peer.py gpu-pack/
cat > gpu-pack/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the packed binaries on a GPU machine with PyTorch 2.11.0 in
# $TORCH_VENV (default /opt/torch/.venv). Parts, each within one 10-minute
# device call:
#   bash gpu-pack/run.sh tests    # GPU tests, compute-sanitizer, the demo (~3 min)
#   bash gpu-pack/run.sh bench    # benches/gpu.rs (+ --memory), criterion CUDA groups (~5 min)
#   bash gpu-pack/run.sh peer     # the Python peer, eager and torch.compile (~5 min)
# With no argument, all three in a row.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${TORCH_VENV:-/opt/torch/.venv}"
site="$(echo "$venv"/lib/python3*/site-packages)"
export LD_LIBRARY_PATH="$site/torch/lib:$site/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
out="${OUT:-$here/out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
status=0
part_tests() {
    for t in kernel_source gpu autograd; do
        echo "== $t" | tee -a "$out/tests.txt"
        "$here/$t" --test-threads=1 --include-ignored 2>&1 | tee -a "$out/tests.txt" || status=1
    done
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool" | tee -a "$out/sanitizer.txt"
        compute-sanitizer --tool "$tool" --print-limit 20 "$here/gpu" --test-threads=1 --include-ignored \
            counts_update kernel_handles out_of_range backward_on node_and_forward_backward a_deferred the_default_matches a_failed_call steps_on launches_go \
            2>&1 | tail -20 | tee -a "$out/sanitizer.txt" || status=1
    done
    echo "== demo on the GPU (2 epochs)" | tee "$out/demo.txt"
    "$here/long_tail" --device cuda --epochs 2 --json "$out/demo.json" 2>&1 | tee -a "$out/demo.txt" || status=1
}
part_bench() {
    echo "== benches/gpu.rs" | tee "$out/bench-gpu.txt"
    "$here/bench-gpu" 2>&1 | tee -a "$out/bench-gpu.txt" || status=1
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$here/bench-gpu" --memory 2>&1 | tee -a "$out/bench-gpu.txt" || status=1
    echo "== criterion, CUDA groups" | tee "$out/bench-criterion.txt"
    "$here/bench-seesaw" --bench "/cuda/" 2>&1 | grep -E "^(step|forward)|time:|thrpt:" |
        tee -a "$out/bench-criterion.txt" || status=1
}
part_peer() {
    echo "== Python peer (eager, torch.compile)" | tee "$out/peer.txt"
    "$venv/bin/python" "$here/seesaw_peer.py" --device cuda 2>&1 | tee -a "$out/peer.txt" || status=1
}
case "${1:-all}" in
    tests) part_tests ;;
    bench) part_bench ;;
    peer) part_peer ;;
    all) part_tests; part_bench; part_peer ;;
    *) echo "usage: run.sh [tests|bench|peer|all]" >&2; exit 2 ;;
esac
exit $status
RUN
chmod +x gpu-pack/run.sh
du -sh gpu-pack; ls -la gpu-pack
