"""The soak benchmark in its quick mode: it trains, samples the RSS of the process and its data
worker at the asked iterations and prints its table (the 10,000-iteration numbers come from
running ``python benchmarks/bench_soak.py``; tests check what it reports, not timings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_soak.py"


def test_soak_quick_mode_reports_rss_at_the_asked_iterations() -> None:
    spec = importlib.util.spec_from_file_location("bench_soak", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.soak(iters=120, at=[20, 120], workers=1, snapshot=60)
    finally:
        torch.set_num_threads(threads)
    assert [row["iter"] for row in rows] == [20, 120]
    assert all(row["main"] > 50 << 20 and row["workers"] > 10 << 20 for row in rows)  # a worker ran
    assert rows[-1]["log_lines"] > 20  # the display lines went to the log file
    text = bench.table(rows)
    first, last = (rows[0]["main"] + rows[0]["workers"], rows[-1]["main"] + rows[-1]["workers"])
    change = 100.0 * (last - first) / first
    assert (
        f"RSS at iteration 120 vs 20: {change:+.1f}% (within 5%: {'yes' if abs(change) <= 5 else 'NO'})"
        in text
    )
    assert text.splitlines()[1].split()[0] == "20" and text.splitlines()[2].split()[0] == "120"
