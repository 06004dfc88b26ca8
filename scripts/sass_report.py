"""The SASS report of kernels/seesaw.cu for sm_90 (scripts/sass-report.sh runs it).

Reads, from the folder the shell script fills:
  shipped.ptxas / shipped.sass   the kernels as they ship (ptxas -v, cuobjdump -sass);
  main_a.sass / main_b.sass      the held way's main path alone (SEESAW_RARE_PATHS=0),
                                 at SEESAW_HELD_PER_THREAD = held - 8 and held.
Per row kernel it gives registers, spills, the widest global load, and the
instructions and MUFU operations per logit of the main path:
  - forward, forward_backward: the held way is unrolled over the logits a
    thread holds, so the difference between the two main-path builds over
    their 8 logits' difference is the cost of one logit;
  - backward: the innermost loop that loads 16-byte vectors (and reads the
    class table from shared memory), over the logits one turn handles.
and a model of the time at LVIS shape. With --check it fails on a spill, on
more registers than SEESAW_BLOCKS_PER_SM resident blocks allow, or on a row
kernel without 16-byte loads.
"""
import os
import re
import sys

# The machine the model is for: an H100 SXM (sm_90).
SMS = 132
CLOCK_HZ = 1.755e9
ISSUE_PER_SM = 4  # warp instructions per cycle
MUFU_PER_SM = 16  # MUFU results per cycle
COPY_BYTES_PER_S = 3.0e12  # what a device-to-device copy reaches
LVIS_ROWS, LVIS_WIDTH = 8192, 1205
THREADS, REGISTERS_PER_SM = 256, 65536

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
FUNCTION = re.compile(r"Function : (\w+)")


def sass_functions(path):
    functions, name = {}, None
    with open(path) as f:
        for line in f:
            m = FUNCTION.search(line)
            if m:
                name = m.group(1)
                functions[name] = []
                continue
            m = INSTRUCTION.search(line)
            if m and name:
                functions[name].append((int(m.group(1), 16), m.group(3), m.group(4)))
    return functions


def ptxas_usage(path):
    usage, name = {}, None
    with open(path) as f:
        for line in f:
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                name = m.group(1)
                usage[name] = {"registers": 0, "spills": 0, "smem": 0}
            m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                usage[name]["spills"] = int(m.group(1)) + int(m.group(2))
            m = re.search(r"Used (\d+) registers", line)
            if m and name:
                usage[name]["registers"] = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                usage[name]["smem"] = int(s.group(1)) if s else 0
    return usage


def counted(instructions):
    return [i for i in instructions if i[1] != "NOP"]


def load_width(opcode):
    for suffix, width in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in opcode:
            return width
    return 4


def widest_load(instructions):
    return max((load_width(op) for _, op, _ in instructions if op.startswith("LDG")), default=0)


def mufu(instructions):
    return sum(op.startswith("MUFU") for _, op, _ in instructions)


def vector_loop(instructions):
    """Instructions and MUFU of the innermost loop with 16-byte loads (one
    reading the table from shared memory first), and its 16-byte loads."""
    loops = []
    for addr, op, args in instructions:
        m = re.match(r"(?:U?P\w+, )?0x([0-9a-f]+)", args.strip())
        if op == "BRA" and m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    innermost = [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]
    best = None
    for start, end in innermost:
        body = counted([i for i in instructions if start <= i[0] <= end])
        vectors = sum(op.startswith("LDG") and ".128" in op for _, op, _ in body)
        shared = any(op.startswith("LDS") for _, op, _ in body)
        if vectors and (best is None or (shared, vectors) > (best[3], best[2])):
            best = (len(body), mufu(body), vectors, shared)
    return best


def vec_of(kernel):
    return 4 if "_f32_" in kernel else 8


def main():
    folder, held = sys.argv[1], int(sys.argv[2])
    check = "--check" in sys.argv[3:]
    shipped = sass_functions(os.path.join(folder, "shipped.sass"))
    usage = ptxas_usage(os.path.join(folder, "shipped.ptxas"))
    main_a = sass_functions(os.path.join(folder, "main_a.sass"))
    main_b = sass_functions(os.path.join(folder, "main_b.sass"))
    budget = REGISTERS_PER_SM // (THREADS * int(os.environ.get("SEESAW_BLOCKS_PER_SM", "2")))
    rows = []
    problems = []
    for kernel in sorted(k for k in shipped if k.startswith("seesaw_")):
        u = usage.get(kernel, {"registers": 0, "spills": 0, "smem": 0})
        row_kernel = kernel.endswith("_warp") or kernel.endswith("_block")
        if u["spills"]:
            problems.append(f"{kernel} spills {u['spills']} bytes")
        if row_kernel and u["registers"] > budget:
            problems.append(f"{kernel} uses {u['registers']} registers, over the budget of {budget}")
        width = widest_load(shipped[kernel])
        if row_kernel and width < 16:
            problems.append(f"{kernel}: widest global load {width} bytes")
        per_logit = mufu_per_logit = None
        if row_kernel and "_backward_" not in kernel.replace("forward_backward", ""):
            extra = 8
            per_logit = (len(counted(main_b[kernel])) - len(counted(main_a[kernel]))) / extra
            mufu_per_logit = (mufu(main_b[kernel]) - mufu(main_a[kernel])) / extra
        elif row_kernel:
            loop = vector_loop(shipped[kernel])
            if loop:
                logits = loop[2] * vec_of(kernel)
                per_logit, mufu_per_logit = loop[0] / logits, loop[1] / logits
        model = ""
        if row_kernel and per_logit is not None:
            elt = 4 if "_f32_" in kernel else 2
            passes = 1 if kernel.startswith("seesaw_forward_") and "backward" not in kernel else 2
            logits = LVIS_ROWS * LVIS_WIDTH
            t_mem = passes * logits * elt / COPY_BYTES_PER_S
            t_issue = logits * per_logit / 32 / (SMS * ISSUE_PER_SM * CLOCK_HZ)
            t_mufu = logits * mufu_per_logit / (SMS * MUFU_PER_SM * CLOCK_HZ)
            model = f"{t_mem * 1e6:.1f} | {t_issue * 1e6:.1f} | {t_mufu * 1e6:.1f} | {max(t_mem, t_issue, t_mufu) * 1e6:.1f}"
        rows.append(
            f"| {kernel} | {u['registers']} | {u['spills']} | {u['smem']} | {width} | "
            + (f"{per_logit:.1f} | {mufu_per_logit:.2f} | " if per_logit is not None else "- | - | ")
            + (model if model else "- | - | - | -")
            + " |"
        )
    print(f"SASS of kernels/seesaw.cu for sm_90 (held logits per thread: {held}; register budget {budget})")
    print()
    print(
        "| kernel | registers | spill bytes | shared bytes | widest load (bytes) | instructions / logit | MUFU / logit "
        "| LVIS memory µs | issue µs | MUFU µs | model µs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(
        f"Model: LVIS shape {LVIS_ROWS} x {LVIS_WIDTH}; memory = bytes moved (logits read once, gradient written "
        f"once) / {COPY_BYTES_PER_S / 1e12:.1f} TB/s; issue = instructions / 32 lanes / ({SMS} SMs x "
        f"{ISSUE_PER_SM} x {CLOCK_HZ / 1e9:.3f} GHz); MUFU = MUFU operations / ({SMS} x {MUFU_PER_SM} x "
        f"{CLOCK_HZ / 1e9:.3f} GHz); the time is the largest of the three."
    )
    if problems:
        print("\n".join(["", "FAILED:"] + problems))
        if check:
            sys.exit(1)


if __name__ == "__main__":
    main()
