"""Search infrastructure: stable interleaved latency, and parallel executors running real ORT work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.search.accuracy import ProxyTask, output_agreement
from edgec.compiler.search.executor import LocalExecutor, make_executor
from edgec.compiler.search.measure import _settled, measure_latencies
from edgec.core.errors import ConfigError
from edgec.runtime.session import make_session, run


def _matmul_model(scale: float) -> bytes:
    """y = x @ (W * scale): scale 1 is the 'original', others are perturbed candidates."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32) * scale
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _feeds(n: int = 4) -> tuple[dict[str, np.ndarray], ...]:
    rng = np.random.default_rng(1)
    return tuple({"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(n))


def _tasks() -> list[ProxyTask]:
    feeds = _feeds()
    reference = tuple(run(make_session(_matmul_model(1.0)), f) for f in feeds)
    # Scaling the weights keeps the agreement at 1; a sign flip on half of them does not.
    flipped = onnx.load_from_string(_matmul_model(1.0))
    w = numpy_helper.to_array(flipped.graph.initializer[0]).copy()
    w[:8] *= -1
    flipped.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    models = [_matmul_model(1.0), _matmul_model(3.0), flipped.SerializeToString()]
    return [ProxyTask(m, feeds, reference) for m in models]


def test_settled_needs_a_flat_recent_history():
    assert not _settled([1.0, 1.0], settle_rounds=3, rel_tol=0.02)
    assert _settled([5.0, 1.0, 1.01, 1.0, 1.005], settle_rounds=3, rel_tol=0.02)
    assert not _settled([1.0, 1.0, 1.0, 1.2], settle_rounds=3, rel_tol=0.02)


def test_measure_latencies_reports_every_model():
    models = [_matmul_model(1.0), _matmul_model(2.0)]
    results = measure_latencies(models, _feeds(1)[0], runs_per_round=2, min_rounds=3, max_rounds=6)
    assert len(results) == 2
    for m in results:
        assert 3 <= m.rounds <= 6 and m.runs == 2 * m.rounds
        assert 0 < m.median_ms <= m.p90_ms


def test_local_executor_runs_real_sessions_in_order():
    tasks = _tasks()
    seen: list[int] = []
    executor = LocalExecutor(workers=2)
    try:
        scores = executor.map(output_agreement, tasks, on_result=lambda i, _: seen.append(i))
    finally:
        executor.close()
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and scores[1] == pytest.approx(1.0, abs=1e-6)
    assert scores[2] < 0.9
    assert sorted(seen) == [0, 1, 2]


def test_dask_executor_matches_local_results():
    distributed = pytest.importorskip("distributed", reason="the 'dist' extra (dask.distributed) is not installed")
    tasks = _tasks()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        executor = make_executor(cluster.scheduler_address)
        try:
            scores = executor.map(output_agreement, tasks)
        finally:
            executor.close()
    assert scores == pytest.approx([output_agreement(t) for t in tasks], abs=1e-9)


def test_bad_scheduler_address_is_a_user_error():
    with pytest.raises(ConfigError, match="--scheduler 'localhost:8786': expected tcp://HOST:PORT"):
        make_executor("localhost:8786")
    with pytest.raises(ConfigError, match="--scheduler tcp://127.0.0.1:1: cannot reach"):
        make_executor("tcp://127.0.0.1:1", connect_timeout_s=1)
