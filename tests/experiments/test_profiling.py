"""The step profiler's summary, on a hand-written trace (a CPU has no device timeline)."""

import jax
import jax.numpy as jnp
import pytest

from experiments import profiling

STATS = {"hlo_category": 7, "tf_op": 8}


def _event(metadata_id: int, duration_us: float, category: str, name_stack: str) -> str:
    return (f"events {{ metadata_id: {metadata_id} offset_ps: 0 "
            f"duration_ps: {int(duration_us * 1e6)} "
            f"stats {{ metadata_id: 7 str_value: \"{category}\" }} "
            f"stats {{ metadata_id: 8 str_value: \"{name_stack}\" }} }}")


def _xspace(ops_events: list[str], other_events: list[str]) -> jax.profiler.ProfileData:
    names = {1: "gemm_fusion.1", 2: "cudnn_fmha.2", 3: "loop_fusion.3"}
    metadata = " ".join(f"event_metadata {{ key: {i} value {{ id: {i} name: \"{n}\" }} }}"
                        for i, n in names.items())
    stats = " ".join(f"stat_metadata {{ key: {i} value {{ id: {i} name: \"{n}\" }} }}"
                     for n, i in STATS.items())
    text = (f"planes {{ id: 1 name: \"/device:GPU:0\" "
            f"lines {{ id: 1 name: \"XLA Ops\" {' '.join(ops_events)} }} "
            f"lines {{ id: 2 name: \"XLA Modules\" {' '.join(other_events)} }} "
            f"{metadata} {stats} }} "
            f"planes {{ id: 2 name: \"/host:CPU\" lines {{ id: 1 name: \"XLA Ops\" "
            f"{' '.join(other_events)} }} {metadata} {stats} }}")
    return _from_text(text)


def _from_text(text: str) -> jax.profiler.ProfileData:
    return jax.profiler.ProfileData.from_serialized_xspace(
        jax.profiler.ProfileData.text_proto_to_serialized_xspace(text))


def test_scope_folds_layer_indices_and_drops_transforms():
    assert profiling.scope_of("jit(step)/transpose(jvp(LM))/block_3/attention/dot_general") \
        == "block_N/attention"
    assert profiling.scope_of("jit(step)/add") == "(outside the model)"
    assert profiling.scope_of("") == "(outside the model)"


def test_summary_sums_device_ops_per_step_by_category_pass_scope_and_kernel():
    ops = [_event(1, 300, "convolution", "jit(step)/jvp(LM)/block_0/mlp/dot_general"),
           _event(1, 100, "convolution", "jit(step)/jvp(LM)/block_1/mlp/dot_general"),
           _event(2, 200, "custom-call",
                  "jit(step)/transpose(jvp(LM))/block_0/attention/cudnn"),
           _event(3, 50, "loop fusion", "jit(step)/adam/mul")]
    # Module-level events and host planes must not be counted.
    other = [_event(3, 10_000, "loop fusion", "jit(step)")]
    summary = profiling.summarize(_xspace(ops, other), steps=2)
    assert summary["device_ms_per_step"] == pytest.approx(0.325)
    assert summary["kernels_per_step"] == 2
    assert summary["by_category"] == pytest.approx(
        {"convolution": 0.2, "custom-call": 0.1, "loop fusion": 0.025})
    assert list(summary["by_category"]) == ["convolution", "custom-call", "loop fusion"]
    assert summary["by_pass"] == pytest.approx({"forward": 0.225, "backward": 0.1})
    assert summary["by_scope"] == pytest.approx(
        {"block_N/mlp": 0.2, "block_N/attention": 0.1, "adam": 0.025})
    first = summary["top_kernels"][0]
    assert (first["name"], first["category"], first["scope"]) == (
        "gemm_fusion.1", "convolution", "block_N/mlp")
    assert first["ms"] == pytest.approx(0.2)
    assert "0.33 ms/step" in profiling.format_summary(summary)


def test_profile_steps_runs_on_cpu_and_reports_no_device_time():
    step = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((64, 64))
    step(x).block_until_ready()
    summary = profiling.profile_steps(lambda: step(x), steps=2)
    assert summary["device_ms_per_step"] == 0.0
    assert summary["top_kernels"] == []


def test_raw_stream_lines_are_read_with_names_from_the_compiled_module():
    text = ('planes { id: 1 name: "/device:GPU:0" '
            'lines { id: 1 name: "Stream #13(compute)" '
            'events { metadata_id: 1 duration_ps: 3000000 } '
            'events { metadata_id: 2 duration_ps: 1000000 } } '
            'lines { id: 2 name: "Memcpy" events { metadata_id: 2 duration_ps: 9000000 } } '
            'event_metadata { key: 1 value { id: 1 name: "nvjet_tst_128x256_bf16" } } '
            'event_metadata { key: 2 value { id: 2 name: "loop_fusion.7" } } }')
    xspace = _from_text(text)
    hlo = ('  %loop_fusion.7 = f32[8]{0} fusion(%p), kind=kLoop, '
           'metadata={op_name="jit(step)/transpose(jvp(LM))/block_2/mlp/mul"}\n')
    summary = profiling.summarize(xspace, steps=1, op_names=profiling.hlo_op_names(hlo))
    assert summary["device_ms_per_step"] == pytest.approx(0.004)  # the Memcpy line is not read
    assert summary["by_category"] == pytest.approx({"matmul": 0.003, "fusion": 0.001})
    assert summary["by_scope"] == pytest.approx({"(outside the model)": 0.003,
                                                 "block_N/mlp": 0.001})
    assert summary["by_pass"] == pytest.approx({"forward": 0.003, "backward": 0.001})
    assert summary["trace_lines"] == {"/device:GPU:0": ["Stream #13(compute)", "Memcpy"]}


def test_command_buffer_events_are_reported_as_hiding_their_kernels_names():
    # a step compiled with XLA's command buffers traces as one command_buffer_N event
    text = ('planes { id: 1 name: "/device:GPU:0" lines { id: 1 name: "XLA Ops" '
            'events { metadata_id: 1 duration_ps: 4000000 } '
            'events { metadata_id: 2 duration_ps: 1000000 } } '
            'event_metadata { key: 1 value { id: 1 name: "command_buffer_1" } } '
            'event_metadata { key: 2 value { id: 2 name: "loop_fusion.7" } } }')
    xspace = _from_text(text)
    summary = profiling.summarize(xspace, steps=2)
    assert summary["command_buffers"] == pytest.approx(0.002)
    assert "0.002 ms in command buffers, whose kernels the trace does not name" in \
        profiling.format_summary(summary)


def test_a_profiled_compile_turns_command_buffers_off_and_computes_the_same():
    step = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.linspace(-1, 1, 64 * 64).reshape(64, 64)
    profiled = profiling.compile_for_profile(step, x)
    assert profiling.PROFILE_COMPILER_OPTIONS == {"xla_gpu_enable_command_buffer": ""}
    assert jnp.array_equal(profiled(x), step(x))
    summary = profiling.profile_steps(lambda: profiled(x), steps=1, hlo_text=profiled.as_text())
    assert summary["command_buffers"] == 0.0
