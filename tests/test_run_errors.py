"""A graph that loads but fails while running through IOBinding is the bundle's fault: a typed error."""

import pytest

from edgevlm.runtime.sessions import ORT_ERRORS, BoundRunError, run_bound


class _Failing:
    def run_with_iobinding(self, binding):
        # what onnxruntime's bindings raise for a failed bound run (found by the bundle fuzzer)
        raise RuntimeError("Error in execution: Non-zero status code returned while running Add node")


def test_bound_run_failure_is_one_of_the_ort_errors_the_pipeline_reports():
    with pytest.raises(BoundRunError, match="Error in execution") as info:
        run_bound(_Failing(), binding=None)
    assert isinstance(info.value, ORT_ERRORS)


def test_our_own_runtime_errors_are_not_swallowed():
    class Bug:
        def run_with_iobinding(self, binding):
            raise ValueError("a bug of ours")

    with pytest.raises(ValueError):
        run_bound(Bug(), binding=None)
