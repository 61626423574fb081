"""The performance suite's measuring tools, at shapes small enough for the default test run."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.run import end_to_end, loading, scaling, summary, waterfall  # noqa: E402
from benchmarks.train_step import Bench, Shape, fitted_exponent, random_pool, random_split, saved_activation_bytes  # noqa: E402

TINY = Shape(batch=8, k=6, vision_tokens=5, text_tokens=6, dim=16, width=32, layers=2)


def activations(method: str, shape: Shape, *extra: str) -> int:
    n = 4 * shape.batch
    return saved_activation_bytes(Bench(method, shape, random_split(shape, n), random_pool(n, shape.k), "cpu", extra))


def test_fitted_exponent_recovers_a_power_law():
    xs = [8, 16, 32, 64]
    assert fitted_exponent(xs, [3e-3 * x ** 1.5 for x in xs]) == pytest.approx(1.5)


def test_random_pool_never_holds_the_anchor_and_has_distinct_rows():
    pool = random_pool(50, 7)
    assert not (pool == pool.new_tensor(range(50))[:, None]).any()
    assert all(len(set(row.tolist())) == 7 for row in pool)


def test_saved_activations_grow_with_the_batch_and_with_negative_gradients():
    small, large = activations("clip", TINY), activations("clip", Shape(**{**TINY.__dict__, "batch": 16}))
    assert large / small == pytest.approx(2.0, rel=0.1)
    no_itm = ("method.num_negatives=4", "method.itm_weight=0")  # against clip, which trains no match head
    without = activations("uniform_hn", TINY, *no_itm)
    with_grad = activations("uniform_hn", TINY, *no_itm, "method.negative_grad=true")
    assert without < 1.05 * small < with_grad  # a no-grad pass keeps nothing for the backward


def test_summary_states_every_target():
    result = {"date": "2026-01-01", "quick": True, "wall_s": 1.0,
              "device": {"gpu": None, "cpu": "test cpu", "torch_threads": 1, "load_avg_1m": 0.0},
              "waterfall": waterfall(TINY, "cpu", reps=1),
              "end_to_end": end_to_end(Shape(batch=2), "cpu", reps=1, encoder="bacl-tiny-vit"),
              "scaling": scaling(TINY, "cpu", reps=1, batches=[4, 8], ks=[3, 6], tokens=[4, 8]),
              "pools": []}
    result["loading"] = loading(TINY, "cpu", reps=1, consumed_per_s=100.0)
    text = summary(result)
    for needle in ("end to end, bacl ÷ clip", "cached features, bacl ÷ clip", "data loading ÷ consumption",
                   "saved activations, bacl − clip", "| pool k |", "BNS selection alone"):
        assert needle in text
    rows = {r["method"]: r for r in result["waterfall"]["rows"]}
    assert rows["clip"]["vs_clip"] == 1.0
    assert math.isclose(sum(r["increment_s"] for r in rows.values()), rows["bacl"]["total_s"])
    assert result["loading"]["vs_consumption"]["in_memory_batch"] == pytest.approx(
        result["loading"]["delivered_per_s"]["in_memory_batch"] / 100.0)


def test_the_scale_benchmark_stops_when_a_worker_dies_instead_of_waiting_forever():
    import multiprocessing

    from benchmarks.scale import collect
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    worker = ctx.Process(target=sys.exit, args=(3,))  # dies without sending its record
    worker.start()
    with pytest.raises(RuntimeError, match=r"died: exit codes \[3\]"):
        collect(queue, [worker], 1)
    worker.join()


def test_the_scale_benchmark_trains_real_streamed_steps_at_one_and_two_ranks(tmp_path):
    """What issue 15 asks each run to record, from real trainer steps on a 10^4-pair store (2 shards)."""
    from benchmarks.scale import run, write_pool, write_store
    write_store(tmp_path / "n", 10_000)
    write_pool(tmp_path / "n", 10_000)
    for world in (1, 2):
        record = run(tmp_path / "n", 10_000, world, batches=2, batch_size=16, buffer=64)
        assert {"n", "world_size", "peak_rss_bytes", "samples_per_s", "loader_ahead_ratio", "negative_read_share"
                } <= record.keys()
        assert 0 < record["negative_read_share"] < 1
        assert record["world_size"] == world == len(record["ranks"])
        assert all(r["rows"] == 2 * 16 and r["negative_read_s"] > 0 for r in record["ranks"])  # negatives read by id
        assert record["loader_ahead_ratio"] > 0 and record["peak_rss_bytes"] > 2**20
