"""benchmarks.step_profile groups a compiled program's instructions by what they are."""
import jax
import jax.numpy as jnp

from benchmarks.step_profile import instruction_kinds


def test_custom_calls_group_by_target_and_fusions_by_kind():
    text = "\n".join([
        '  %ffi_call.7 = f32[4,8]{1,0} custom-call(f32[4,8]{1,0} %p0), custom_call_target="jaxmodels_cpu_matmul"',
        "  %wrapped_tanh.2 = f32[4,8]{1,0} fusion(f32[4,8]{1,0} %p0), kind=kLoop, calls=%wrapped_tanh_computation",
        "  ROOT %tuple.3 = (f32[4,8]{1,0}, f32[]) tuple(f32[4,8]{1,0} %ffi_call.7, f32[] %c)",
        "  %all-reduce.1 = f32[8]{0} all-reduce(f32[8]{0} %x), replica_groups={{0,1}}, to_apply=%add",
    ])
    assert instruction_kinds(text) == {"ffi_call.7": "jaxmodels_cpu_matmul", "wrapped_tanh.2": "fusion (kLoop)",
                                       "tuple.3": "tuple", "all-reduce.1": "all-reduce"}


def test_a_real_compiled_program_parses():
    x = jnp.ones((16, 16))
    text = jax.jit(lambda a: jnp.tanh(a) @ a + 1.0).lower(x).compile().as_text()
    kinds = instruction_kinds(text)
    assert kinds, text[:500]
    assert any(k.startswith("fusion") or k == "dot" for k in kinds.values()), kinds
    assert "parameter" in kinds.values()
