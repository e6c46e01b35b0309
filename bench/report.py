"""The results table (Markdown), with the targets each figure is held to."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "ratio": 0.20,  # full semantics vs the raw baseline, same run
    "p99_ms": 100.0,  # at 1,000 orders/s
    "warm_restart_s": 30.0,  # 1 million customers in the store
    "state_bytes_per_customer": 300.0,
}

# What bounds the full worker, measured on the same records (bench.floor, bench.core)
FLOORS = {
    "floor": "Faust agent doing only the baseline's work, in batches as the worker takes them "
    "(framework floor)",
    "floor_events": "the same, one Faust event per record (Faust's own stream path)",
    "core": "the product's fold alone, in process (no Kafka, Redis or store)",
    "quix": "Quix Streams peer doing a smaller job (bench/quix_peer.py), Redis included",
}


def _verdict(value: Any, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def render(results: Any) -> str:
    m = results.machine
    f = results.figures
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m.get('date')} on {m.get('cores')} cores ({m.get('cpu')}), "
        f"{m.get('memory_gib')} GiB, {m.get('os')}, Python {m.get('python')}; Apache Kafka "
        "and Redis of the devstack on loopback, on the same machine. "
        "Command: `make bench` (`python -m bench`).",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
    ]

    def row(name: str, value: Any, target: str = "", verdict: str = "") -> None:
        lines.append(f"| {name} | {value} | {target} | {verdict} |")

    if t := f.get("throughput"):
        raw = t["raw_orders_per_s"]
        row("orders in the throughput run", f"{t['orders']:,} ({t['customers']:,} customers)")
        row("raw aiokafka baseline, orders/s (before, after)", f"{raw[0]:,}, {raw[1]:,}")
        row("full worker, orders/s", f"{t['worker_orders_per_s']:,}")
        row(
            "full worker / baseline",
            f"{t['ratio']:.1%}",
            f">= {TARGETS['ratio']:.0%}",
            _verdict(t["ratio"], TARGETS["ratio"], higher_is_better=True),
        )
        for floor, what in FLOORS.items():
            if f"{floor}_orders_per_s" in t:
                row(
                    f"{what}, orders/s; / baseline",
                    f"{t[f'{floor}_orders_per_s']:,}; {t[f'{floor}_ratio']:.1%}",
                )
        if "worker_vs_quix" in t:
            row(
                "full worker / Quix Streams peer, same records",
                f"{t['worker_vs_quix']:.2f}x",
                "> 1",
                _verdict(t["worker_vs_quix"], 1.0, higher_is_better=True),
            )
        row("worker RSS after the run (peak), MiB", f"{t['worker_rss_mib'].get('VmRSS')} "
            f"({t['worker_rss_mib'].get('VmHWM')})")  # fmt: skip
        row(
            "state on disk per customer (throughput store), bytes",
            t["state_bytes_per_customer"],
            f"< {TARGETS['state_bytes_per_customer']:.0f}",
            _verdict(t["state_bytes_per_customer"], TARGETS["state_bytes_per_customer"]),
        )
        if "state_bytes_max" in t:
            row(
                f"stored state after the run ({t['stored_states']:,} customers), "
                "median / p99 / largest, bytes",
                f"{t['state_bytes_median']:,.0f} / {t['state_bytes_p99']:,.0f} / "
                f"{t['state_bytes_max']:,}",
                f"<= {t['state_bytes_bound']:,} (bound)",
                _verdict(t["state_bytes_max"], t["state_bytes_bound"]),
            )
    if (lat := f.get("latency")) and "p50_ms" in lat:
        row(
            f"end-to-end latency at {lat['offered_per_s']:,} orders/s "
            f"(achieved {lat['achieved_per_s']:,}), p50 / p99 / max, ms",
            f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']}",
            f"p99 < {TARGETS['p99_ms']:.0f}",
            _verdict(lat["p99_ms"], TARGETS["p99_ms"]),
        )
        row(
            "  p99 to the transition topic / to Redis, ms",
            f"{lat['transition_p99_ms']} / {lat['redis_p99_ms']}",
        )
        if lat.get("warmup_p99_ms") is not None:
            row(
                f"  the {lat['warmup_seconds']:.0f} s warm-up before it (not in the figures "
                "above), p99 / max, ms",
                f"{lat['warmup_p99_ms']} / {lat['warmup_max_ms']}",
            )
    if late := f.get("lateness"):
        row(
            f"time-caused transitions ({late['customers']:,}): emitted after the due instant, "
            "p50 / p99 / max, ms",
            f"{late['emitted_p50_ms']} / {late['emitted_p99_ms']} / {late['emitted_max_ms']}",
        )
        row("  seen by a consumer after the due instant, p99, ms", late["seen_p99_ms"])
    if r := f.get("restart"):
        row("customers in the restart store", f"{r['customers']:,}")
        row("cold start (recovery from the changelog), s", r["cold_recovery_s"])
        row(
            "warm restart on the same RocksDB store, to ready, s",
            r["warm_restart_s"],
            f"< {TARGETS['warm_restart_s']:.0f}",
            _verdict(r["warm_restart_s"], TARGETS["warm_restart_s"]),
        )
        row(
            "state on disk per customer (restart store), bytes",
            r["state_bytes_per_customer"],
            f"< {TARGETS['state_bytes_per_customer']:.0f}",
            _verdict(r["state_bytes_per_customer"], TARGETS["state_bytes_per_customer"]),
        )
        row("worker RSS with the store loaded (peak), MiB", f"{r['worker_rss_mib'].get('VmRSS')} "
            f"({r['worker_rss_mib'].get('VmHWM')})")  # fmt: skip
    if sc := f.get("scaling"):
        shares = ", ".join(f"{n:,}" for n in sc["records_per_worker"])
        row(
            f"{sc['workers']} workers of one group, the same {sc['orders']:,} orders: "
            "orders/s together (records each)",
            f"{sc['orders_per_s']:,} ({shares})",
        )
        if sc.get("speedup") is not None:
            row(
                f"  {sc['workers']} workers / the single worker of the throughput run",
                f"{sc['speedup']:.2f}x",
            )
    lines.append("")
    return "\n".join(lines)
