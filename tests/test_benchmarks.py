"""The benchmark suites' arithmetic on a fake clock: each rate is the work done over the time the
clock says it took, so a wrong divisor cannot reach BENCHMARKS.md."""
import types

import pytest

import prepare
from benchmarks import common, cpu, data_pipeline, scripts
from test_filters import GOOD_CODE, GOOD_PROSE


class FakeClock:
    """time.perf_counter that moves only when read (by tick) or when a step advances it."""

    def __init__(self, tick=0.0):
        self.now, self.tick = 1000.0, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now

    def advance(self, seconds):
        self.now += seconds


def fake_time(monkeypatch, module, clock):
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter,
                                                              sleep=lambda s: clock.advance(s)))


def test_interleaved_rates_are_tokens_over_the_median_step(monkeypatch):
    clock = FakeClock()
    fake_time(monkeypatch, common, clock)
    durations = iter([1.0, 0.5, 3.0, 0.5, 2.0, 0.5])  # a, b, a, b, a, b
    step = lambda: clock.advance(next(durations))  # noqa: E731
    rates = common.interleaved_rates({"a": (step, 600), "b": (step, 1000)}, rounds=3)
    assert rates == {"a": pytest.approx(600 / 2.0), "b": pytest.approx(1000 / 0.5)}


def test_sgemm_and_bandwidth_divide_the_work_by_the_clock(monkeypatch):
    clock = FakeClock(tick=0.25)  # every timed block takes 0.25 s
    fake_time(monkeypatch, cpu, clock)
    assert cpu.sgemm_gflops(n=4, repeats=5) == pytest.approx(2 * 4 ** 3 * 5 / 0.25 / 1e9)
    rows = 3
    assert cpu.stream_bandwidth(4 * 2560 * rows, repeats=2) == pytest.approx(rows * 2560 * 4 / 0.25 / 1e9)


def test_concurrent_clients_add_every_completion_over_the_wall_clock(monkeypatch):
    clock = FakeClock(tick=2.0)  # the batch of requests takes 2 s between the two readings
    fake_time(monkeypatch, scripts, clock)
    latencies = iter([0.3, 0.1, 0.2, 0.6, 0.5, 0.4])
    monkeypatch.setattr(scripts, "post", lambda url, body: ({"usage": {"completion_tokens": 7}}, next(latencies)))
    rate, seen = scripts.concurrent_clients("http://x", clients=3, requests_each=2, body={})
    assert rate == pytest.approx(3 * 2 * 7 / 2.0) and seen == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_data_pipeline_rows_and_the_filters_extrapolation(monkeypatch, capsys):
    data_pipeline.row("a stage", 2.0, docs=10, chars=4_000_000, note="n")
    assert capsys.readouterr().out == "| a stage | 2.00 s | 5 docs/s, 2.00 MB/s | n |\n"
    # each timed block takes 1 s: the per-document toxicity calls, timed on all of these 3
    # documents (fewer than the 2,000 it samples), extrapolate to 1 s, not to 3/2,000 of it
    clock = FakeClock(tick=1.0)
    fake_time(monkeypatch, data_pipeline, clock)
    items = [("p", "prose", GOOD_PROSE), ("q", "prose", GOOD_PROSE + " More."), ("c", "code", GOOD_CODE)]
    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    data_pipeline.time_filters(items, sum(len(raw) for _, _, raw in items), cfg)
    printed = capsys.readouterr().out
    chars = sum(len(raw) for _, _, raw in items)
    assert f"| clean + quality filters | 1.00 s | 3 docs/s, {chars / 1e6:.2f} MB/s | 1 process |" in printed
    assert "toxicity (one call per doc, extrapolated) 1.0 s" in printed
