"""The benchmark's output: Markdown tables, the JSON it writes, a PNG of latency and CPU against load."""

from pathlib import Path

PROCESS_ORDER = ["web", "relay", "billing", "orders", "postgresql", "rabbitmq", "load generator"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kinds(cpu: dict) -> list[str]:
    return [k for k in PROCESS_ORDER if k in cpu] + sorted(k for k in cpu if k not in PROCESS_ORDER)


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}` · {result['started_at']} · {result['machine']['summary']}", ""]
    steps = result.get("steps") or []
    if steps:
        lines += [
            "| offered/s | accepted/s | finished/s | errors | POST p50 / p99 ms"
            " | created→terminal p50 / p95 / p99 / max ms | outbox lag p50 / p99 ms"
            " | tx/order | host busy | sustained |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for s in steps:
            e2e, post, lag = s["end_to_end_ms"], s["post_ms"], s["outbox_lag_ms"]
            lines.append(
                f"| {s['offered_per_second']:g} | {s['accepted_per_second']:.1f} | {s['finished_per_second'] or 0:.1f}"
                f" | {sum(s['errors'].values())} | {_ms(post['p50'])} / {_ms(post['p99'])}"
                f" | {_ms(e2e['p50'])} / {_ms(e2e['p95'])} / {_ms(e2e['p99'])} / {_ms(e2e['max'])}"
                f" | {_ms(lag['p50'])} / {_ms(lag['p99'])} | {s['transactions_per_order'] or 0:.1f}"
                f" | {s['host_busy_percent'] or 0:.0f} % | {'yes' if s['sustained'] else 'no'} |"
            )
        kinds = _kinds(steps[0]["cpu_ms_per_order"])
        lines += [
            "",
            "CPU ms per order, by process type:",
            "",
            "| offered/s | " + " | ".join(kinds) + " | total (system) |",
            "|---:|" + "---:|" * (len(kinds) + 1),
        ]
        for s in steps:
            cpu = s["cpu_ms_per_order"]
            cells = " | ".join(_ms(cpu.get(k)) for k in kinds)
            lines.append(f"| {s['offered_per_second']:g} | {cells} | **{_ms(s['cpu_ms_per_order_total'])}** |")
        stage_names = list(steps[0].get("stages_ms") or {})
        if stage_names:
            lines += [
                "",
                "Where a paid order's time goes, p50 / p99 ms (from the timestamps each step writes):",
                "",
                "| offered/s | " + " | ".join(stage_names) + " |",
                "|---:|" + "---:|" * len(stage_names),
            ]
            for s in steps:
                cells = " | ".join(
                    f"{_ms(s['stages_ms'][n]['p50'])} / {_ms(s['stages_ms'][n]['p99'])}" for n in stage_names
                )
                lines.append(f"| {s['offered_per_second']:g} | {cells} |")
        peak = {k: max(s["peak_rss_mb"].get(k, 0) for s in steps) for k in kinds}
        lines += ["", "Peak RSS per process (MB): " + ", ".join(f"{k} {peak[k]:.0f}" for k in kinds)]
    summary = result.get("summary") or {}
    if summary:
        lines += ["", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in summary.items()]
    return "\n".join(lines)


def comparison(results: dict[str, dict]) -> str:
    """The node's and the cluster's runs side by side: per rate, what each sustained and what it cost."""
    node, cluster = results["node"], results["cluster"]
    lines = [f"`{node['command']}` and `{cluster['command']}` · {node['started_at']} · {node['machine']['summary']}"]
    node_steps = {s["offered_per_second"]: s for s in node.get("steps") or []}
    cluster_steps = {s["offered_per_second"]: s for s in cluster.get("steps") or []}
    rates = sorted(set(node_steps) | set(cluster_steps))
    if rates:
        lines += [
            "",
            "| offered/s | finished/s (1 node / 3 nodes) | created→terminal p50 ms | p99 ms"
            " | POST p99 ms | CPU ms per order (of it RabbitMQ) | sustained |",
            "|---:|---:|---:|---:|---:|---:|:---:|",
        ]

        def pair(rate: float, cell) -> str:
            values = [cell(steps[rate]) if rate in steps else "-" for steps in (node_steps, cluster_steps)]
            return " / ".join(values)

        for rate in rates:
            cells = [
                pair(rate, lambda s: f"{s['finished_per_second'] or 0:.1f}"),
                pair(rate, lambda s: _ms(s["end_to_end_ms"]["p50"])),
                pair(rate, lambda s: _ms(s["end_to_end_ms"]["p99"])),
                pair(rate, lambda s: _ms(s["post_ms"]["p99"])),
                pair(
                    rate, lambda s: f"{_ms(s['cpu_ms_per_order_total'])} ({_ms(s['cpu_ms_per_order'].get('rabbitmq'))})"
                ),
                pair(rate, lambda s: "yes" if s["sustained"] else "no"),
            ]
            lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    for name, result in (("1 node", node), ("3 nodes", cluster)):
        for key, value in (result.get("summary") or {}).items():
            if key.startswith(("after", "replay", "sustained")):
                lines.append(f"\n{name}, {key}: {value}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result.get("steps") or []
    if not steps:
        return
    rates = [s["offered_per_second"] for s in steps]
    fig, (latency, cpu) = plt.subplots(1, 2, figsize=(13, 5))
    for key, style in (("p50", "-o"), ("p95", "-s"), ("p99", "-^")):
        latency.plot(rates, [s["end_to_end_ms"][key] for s in steps], style, label=f"created→terminal {key}")
    latency.plot(rates, [s["post_ms"]["p99"] for s in steps], "--x", label="POST p99")
    latency.set_yscale("log")
    latency.set_xlabel("offered load (orders/s)")
    latency.set_ylabel("latency (ms)")
    latency.set_title("Latency against offered load")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend()
    bottom = [0.0] * len(steps)
    for kind in _kinds(steps[0]["cpu_ms_per_order"]):
        values = [s["cpu_ms_per_order"].get(kind) or 0.0 for s in steps]
        cpu.bar([f"{r:g}" for r in rates], values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cpu.set_xlabel("offered load (orders/s)")
    cpu.set_ylabel("CPU ms per order")
    cpu.set_title("CPU per order, by process type")
    cpu.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{result['started_at']} · {result['machine']['summary']}", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
