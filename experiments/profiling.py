r"""Where a jitted step's device time goes: a trace taken with the JAX profiler, summed per
kernel, per op category and per model scope.

    profiled = compile_for_profile(step, state, batch)       # step: a jax.jit function
    summary = profile_steps(lambda: profiled(state, batch), steps=3,
                            hlo_text=profiled.as_text())
    print(format_summary(summary))

`profile_steps` runs the call under `jax.profiler.trace`, reads the trace back with
`jax.profiler.ProfileData` and sums the kernels on the accelerator's timeline (its "XLA Ops"
line where the trace has one, else its per-stream lines: one event per kernel run). An
event's stats name its HLO instruction (`hlo_op`), XLA's class of it (`hlo_category`) and
the JAX name stack (`tf_op`: `jit(step)/transpose(jvp(LM))/block_3/attention/...`); where a
trace lacks them, the class comes from the kernel's name and the name stack from the
compiled module's metadata (`hlo_op_names`). From the name stack come the scope (the flax
module path with indices folded) and the pass (backward when it holds `transpose(`). Times
are device time per step; a CPU has no such timeline and the summary is empty.

XLA's GPU command buffers (CUDA graphs) put every kernel inside one under the instruction
`command_buffer_N` (their categories survive, their names do not), so a step to profile is
compiled with them off (`compile_for_profile`); timings keep XLA's defaults. A summary whose
trace still holds one says so (`command_buffers`).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from collections.abc import Callable

import jax

OPS_LINE = "XLA Ops"
# XLA flags for a profiled compile: no command buffers, so every kernel keeps its own name
PROFILE_COMPILER_OPTIONS = {"xla_gpu_enable_command_buffer": ""}
COMMAND_BUFFER = re.compile(r"command_buffer")


def scope_of(name_stack: str) -> str:
    """The model scope of a JAX name stack: its flax module path, layer indices folded
    ("jit(step)/transpose(jvp(LM))/block_3/attention/dot_general" -> "block_N/attention"),
    or "(outside the model)" for ops of the step itself (optimizer, loss glue)."""
    parts = [part for part in name_stack.split("/") if part]
    modules = [re.sub(r"\d+", "N", part) for part in parts[1:-1]
               if "(" not in part and part not in ("while", "body", "cond")]
    return "/".join(modules) if modules else "(outside the model)"


def kernel_category(kernel: str) -> str:
    """A coarse class of a GPU kernel by its name, for traces without XLA's `hlo_category`."""
    name = kernel.lower()
    for category, marks in (("attention", ("fmha", "flash", "cudnn", "attention")),
                            ("matmul", ("gemm", "xmma", "cutlass", "cublas", "nvjet",
                                        "matmul", "dot")),
                            ("copy", ("memcpy", "memset", "copy", "transpose")),
                            ("fusion", ("fusion",))):
        if any(mark in name for mark in marks):
            return category
    return "other"


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """{HLO instruction name: its JAX name stack} from a compiled module's text
    (`compiled.as_text()`: `%name = ... metadata={op_name="jit(step)/..."}`)."""
    found = re.finditer(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?op_name="([^"]*)"', hlo_text,
                        re.MULTILINE)
    return {match[1]: match[2] for match in found}


def device_lines(plane) -> list:
    """The lines of a device plane that hold one event per kernel run: XLA's "XLA Ops" line
    where the trace has one, else the raw per-stream lines ("Stream #..")."""
    lines = list(plane.lines)
    ops = [line for line in lines if line.name == OPS_LINE]
    return ops or [line for line in lines if line.name.startswith("Stream")]


def summarize(xspace: jax.profiler.ProfileData, steps: int, top: int = 25,
              op_names: dict[str, str] | None = None) -> dict:
    """Device time per step of the kernels on every accelerator plane of `xspace`:

        {"device_ms_per_step": float, "kernels_per_step": float,
         "by_category": {category: ms}, "by_pass": {"forward"|"backward": ms},
         "by_scope": {scope: ms} (the `top` largest), "top_kernels": [{"name", "category",
         "scope", "ms"}] (the `top` largest HLO instructions, summed over their kernel runs;
         category: that of most of their time),
         "trace_lines": {plane: [line names]},
         "command_buffers": ms of command-buffer events (their kernels unnamed; 0.0 when
         the step was compiled by `compile_for_profile`)},

    each sorted by time, descending. An event's HLO instruction is its `hlo_op` stat (else
    its name), its category XLA's `hlo_category` stat (else `kernel_category`), its name
    stack the `tf_op` stat (else `op_names[instruction]`, from `hlo_op_names`)."""
    op_names = op_names or {}
    total_ns, count = 0.0, 0
    by_category, by_pass, by_scope = (collections.Counter() for _ in range(3))
    kernels: dict[str, dict] = {}
    trace_lines = {}
    for plane in xspace.planes:
        if not plane.name.startswith("/device:"):
            continue
        trace_lines[plane.name] = [line.name for line in plane.lines]
        for line in device_lines(plane):
            for event in line.events:
                stats = dict(event.stats)
                instruction = str(stats.get("hlo_op", event.name))
                category = str(stats.get("hlo_category", kernel_category(event.name)))
                name_stack = str(stats.get("tf_op", ""))
                if "/" not in name_stack:  # raw GPU traces say only "XlaModule:"
                    name_stack = op_names.get(instruction, "")
                scope = scope_of(name_stack)
                total_ns += event.duration_ns
                count += 1
                by_category[category] += event.duration_ns
                by_pass["backward" if "transpose(" in name_stack else "forward"] += \
                    event.duration_ns
                by_scope[scope] += event.duration_ns
                kernel = kernels.setdefault(instruction, {
                    "name": instruction, "scope": scope, "ns": 0.0,
                    "categories": collections.Counter()})
                kernel["ns"] += event.duration_ns
                kernel["categories"][category] += event.duration_ns

    def per_step(counter, limit=None):
        return {key: ns / steps / 1e6 for key, ns in counter.most_common(limit)}

    top_kernels = sorted(kernels.values(), key=lambda k: -k["ns"])[:top]
    return {"device_ms_per_step": total_ns / steps / 1e6, "kernels_per_step": count / steps,
            "by_category": per_step(by_category), "by_pass": per_step(by_pass),
            "by_scope": per_step(by_scope, top),
            "top_kernels": [{"name": k["name"],
                             "category": k["categories"].most_common(1)[0][0],
                             "scope": k["scope"], "ms": k["ns"] / steps / 1e6}
                            for k in top_kernels],
            "trace_lines": trace_lines,
            "command_buffers": sum(k["ns"] for k in kernels.values()
                                   if COMMAND_BUFFER.search(k["name"])) / steps / 1e6}


def compile_for_profile(jitted, *args):
    """`jitted` (a `jax.jit` function) compiled for `args` with PROFILE_COMPILER_OPTIONS:
    the executable to call under `profile_steps` (and whose `as_text()` is its
    `hlo_text`)."""
    return jitted.lower(*args).compile(compiler_options=PROFILE_COMPILER_OPTIONS)


def profile_steps(run_step: Callable[[], object], steps: int, top: int = 25,
                  hlo_text: str = "") -> dict:
    """`summarize` of a trace of `steps` calls of `run_step` (each call's result is waited
    for); call it after compilation and warm-up, on an executable from
    `compile_for_profile`. `hlo_text`, the compiled step's HLO, names the scopes where the
    trace itself does not."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                jax.block_until_ready(run_step())
        (path,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        return summarize(jax.profiler.ProfileData.from_file(path), steps, top,
                         hlo_op_names(hlo_text))


def format_summary(summary: dict) -> str:
    """A few readable lines: totals, then the categories, passes, scopes and kernels."""
    lines = [f"device time {summary['device_ms_per_step']:.2f} ms/step in "
             f"{summary['kernels_per_step']:.0f} kernels"]
    if summary.get("command_buffers"):
        lines.append(f"  {summary['command_buffers']:.3f} ms in command buffers, whose "
                     f"kernels the trace does not name (profile a compile_for_profile "
                     f"executable)")
    for title in ("by_category", "by_pass", "by_scope"):
        lines.append(f"  {title[3:]}: " + ", ".join(
            f"{key} {ms:.2f}" for key, ms in summary[title].items()))
    lines.extend(f"    {k['ms']:7.3f} ms  {k['category']:<16} {k['scope']:<28} {k['name']}"
                 for k in summary["top_kernels"])
    return "\n".join(lines)
