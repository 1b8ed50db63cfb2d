"""make bench's output: the table, the target ratios, and the chart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# (name, scenario, against, measure, target, "min" when the ratio must reach it, "max" when not exceed)
TARGETS = [
    ("transfer / raw-sql", "transfer", "raw-sql", "requests_per_s", 0.6, "min"),
    ("transfer-hot / transfer", "transfer-hot", "transfer", "requests_per_s", 0.5, "min"),
    ("balance / ping", "balance", "ping", "requests_per_s", 0.4, "min"),
    ("balance p99 under login / alone", "balance (under login)", "balance", "p99_ms", 1.5, "max"),
    ("payment-accept / transfer", "payment-accept", "transfer", "requests_per_s", 1.5, "min"),
    (
        "payment-settle (1 worker) / raw-sql",
        "payment-settle (1 worker)",
        "raw-sql",
        "requests_per_s",
        0.8,
        "min",
    ),
    (
        "payment-settle 2 workers / 1",
        "payment-settle (2 workers)",
        "payment-settle (1 worker)",
        "requests_per_s",
        1.0,
        "min",
    ),
    ("payment-latency p99 ms (absolute)", "payment-latency", None, "p99_ms", 250, "max"),
    ("fx-transfer / transfer", "fx-transfer", "transfer", "requests_per_s", 0.8, "min"),
    ("payroll items/s / raw-sql", "payroll", "raw-sql", "requests_per_s", 3.0, "min"),
    # Deliveries keep up with half the transfer rate, and delivering costs transfers <= 15%.
    (
        "webhook deliveries / transfer",
        "fanout: deliveries",
        "fanout: delivering",
        "requests_per_s",
        0.5,
        "min",
    ),
    (
        "webhook transfer, delivering / none",
        "fanout: delivering",
        "fanout: no endpoint",
        "requests_per_s",
        0.85,
        "min",
    ),
    (
        "webhook transfer p99, receiver 2 s / none",
        "fanout: receiver 2s",
        "fanout: no endpoint",
        "p99_ms",
        1.5,
        "max",
    ),
]


def ratios(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {s["scenario"]: s for s in summaries}
    checked = []
    for name, scenario, against, measure, target, kind in TARGETS:
        if scenario not in by_name or (against is not None and against not in by_name):
            continue  # BENCH_SCENARIOS left one out
        denominator = by_name[against][measure] if against is not None else 1.0
        value = by_name[scenario][measure] / denominator if denominator else 0.0
        met = value >= target if kind == "min" else value <= target
        checked.append({"ratio": name, "value": round(value, 3), "target": target,
                        "kind": kind, "met": met})  # fmt: skip
    return checked


def print_table(summaries: list[dict[str, Any]], checked: list[dict[str, Any]]) -> None:
    print(
        f"\n{'scenario':<22}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>9}"
    )
    for s in summaries:
        print(f"{s['scenario']:<22}{s['clients']:>8}{s['requests_per_s']:>10.0f}{s['p50_ms']:>9.2f}"
              f"{s['p95_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['error_rate']:>8.2%} "
              + (str(s["errors"]) if s["errors"] else ""))  # fmt: skip
    print(f"\nCPU per request, µs, by process (all share the machine's {os.cpu_count()} cores)")
    groups = ["api", "postgres", "redis", "client"]
    groups += sorted(
        {g for s in summaries for g in s["cpu_us_per_request"]} - set(groups)
    )  # pgbouncer
    print(f"{'scenario':<22}" + "".join(f"{g:>10}" for g in groups) + f"{'total':>10}")
    for s in summaries:
        cpu = s["cpu_us_per_request"]
        if cpu:
            print(f"{s['scenario']:<22}" + "".join(f"{cpu.get(g, 0):>10.0f}" for g in groups)
                  + f"{sum(cpu.values()):>10.0f}")  # fmt: skip
    print()
    for c in checked:
        sign = ">=" if c["kind"] == "min" else "<="
        print(f"{c['ratio']:<34}{c['value']:>7.2f}   target {sign} {c['target']:<4}  "
              + ("met" if c["met"] else "MISSED"))  # fmt: skip


def write_results(out: Path, results: dict[str, Any]) -> None:
    """bench.json, and bench.png drawn from it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    write_chart(results["scenarios"], out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


def write_chart(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["scenario"] for s in summaries]
    positions = range(len(names))
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    throughput.bar(positions, [s["requests_per_s"] for s in summaries], color="#3b6ea5")
    throughput.set_ylabel("requests/s")
    throughput.set_title(f"payments API, {summaries[0]['clients']} clients a scenario")
    for i, s in enumerate(summaries):
        throughput.annotate(f"{s['requests_per_s']:.0f}", (i, s["requests_per_s"]), ha="center",
                            va="bottom", fontsize=8)  # fmt: skip
    width = 0.27
    for offset, (key, colour) in enumerate(
        [("p50_ms", "#7fb77e"), ("p95_ms", "#f0a04b"), ("p99_ms", "#c8553d")]
    ):
        latency.bar([p + (offset - 1) * width for p in positions], [s[key] for s in summaries],
                    width, label=key.removesuffix("_ms"), color=colour)  # fmt: skip
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.legend()
    latency.set_xticks(list(positions), names, rotation=20, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
