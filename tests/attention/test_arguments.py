"""Every registered op, thrown random good and bad keyword values (hypothesis): each call
returns the right shape or raises a ValueError / NoImplementationError / KeyError (naming the
argument when one value was corrupted), within seconds, never hanging."""

from __future__ import annotations

import inspect
import signal

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lla.attention as attention
from lla.attention import token_order

ARRAYS = tuple(jax.random.normal(jax.random.key(i), (1, 64, 2, 16)) for i in range(3))
GRIDS = st.sampled_from([(8, 8), (64,), (4, 4, 4), (2, 32), (8, 9), (64, 0), (-8, -8)])
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.floats(-2, 100),
    st.just(float("nan")),
    st.text(max_size=3), st.tuples(st.integers(-2, 20), st.integers(-2, 20)),
    st.lists(st.integers(0, 9), max_size=4), GRIDS)
SECONDS = 20


class HungError(Exception):
    pass


def _alarm(signum, frame):
    raise HungError


def valid_arguments(op: attention.AttentionOp) -> dict:
    """Keyword arguments that run on the 64-token ARRAYS: the op's example kwargs and the
    spatial arguments of an 8 x 8 grid where the op takes a grid."""
    grid = (8, 8) if 2 in op.capabilities.spatial_dims else (64,)
    return {**op.example_kwargs, **token_order.for_op(op, grid).op_kwargs}


def keywords(op: attention.AttentionOp) -> list[str]:
    return [name for name, p in inspect.signature(op.fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_call(op, kwargs, corrupted: str | tuple[str, ...] | None = None):
    """The call returns [B, N, H, D] or raises ValueError / NoImplementationError / KeyError
    whose message names `corrupted` (the argument given a random value, or one of several),
    within SECONDS. (SIGALRM interrupts Python loops, not a hang inside compiled code.)"""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        out = op(*ARRAYS, **kwargs)
        out = out[0] if isinstance(out, tuple) else out  # (out, lse) with return_residuals
        assert out.shape == ARRAYS[0].shape, kwargs
    except HungError:
        pytest.fail(f"{op.name}(**{kwargs}) ran for more than {SECONDS} s")
    except (ValueError, attention.NoImplementationError, KeyError) as error:
        if corrupted is not None:
            names = (corrupted,) if isinstance(corrupted, str) else corrupted
            assert any(name in str(error) for name in names), (kwargs, str(error))  # noqa: PT017
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", attention.names())
def test_one_random_keyword_value_returns_or_raises_naming_it(name):
    """Valid arguments with one keyword replaced by a random value (or the valid ones)."""
    op = attention.get(name)
    base = valid_arguments(op)
    check_call(op, base)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(keywords(op)), VALUES)
    def run(keyword, value):
        check_call(op, {**base, keyword: value}, corrupted=keyword)

    with jax.default_matmul_precision("highest"):
        run()


@pytest.mark.parametrize("name", attention.names())
def test_random_keyword_combinations_never_hang_or_fail_unclearly(name):
    op = attention.get(name)

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.fixed_dictionaries({}, optional={k: VALUES for k in keywords(op)}))
    def run(kwargs):
        check_call(op, {**valid_arguments(op), **kwargs}, corrupted=tuple(kwargs) or None)

    with jax.default_matmul_precision("highest"):
        run()


def test_the_checker_flags_a_hang_and_an_unclear_error(monkeypatch):
    def hangs(q, k, v):
        while True:
            pass

    def unclear(q, k, v):
        return 1 // 0

    def op(fn):
        return attention.AttentionOp(name="bad", fn=fn, summary="x",
                                     implementations=[attention.Implementation("xla", fn)])

    with pytest.raises(ZeroDivisionError):
        check_call(op(unclear), {})
    monkeypatch.setattr(__import__(__name__, fromlist=["SECONDS"]), "SECONDS", 1)
    with pytest.raises(pytest.fail.Exception, match="ran for more than 1 s"):
        check_call(op(hangs), {})
