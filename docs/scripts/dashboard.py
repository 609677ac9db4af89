"""
Draw docs/img/dashboard.png: the Grafana dashboard (dashboards/grafana/)
during an outage, from a real run (about 35 s, loopback only).

A peer on 127.0.0.1 is healthy, then answers 503, then hangs, then
recovers. Four threads call it through one ResilientSession with a
`prometheus_listener`; a real Prometheus (Debian's ``prometheus``) scrapes
the app every half second, and every panel is drawn from the dashboard's
own queries, run by that Prometheus over the run (``query_range``), with
``$__rate_interval`` as 2 s and every endpoint selected.

    python docs/scripts/dashboard.py [--out docs/img/dashboard.png]

Needs matplotlib, prometheus-client and the prometheus binary.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # this checkout's package, and the test helpers

from prom_support import DASHBOARD, concrete, dashboard_targets, query_range, with_outage  # noqa: E402

#: (start second, what the peer does)
PHASES = [(0.0, "healthy"), (6.0, "503"), (12.0, "hang"), (17.0, "healthy")]
DURATION = 25.0
SCRAPE = 0.5
STEP = 0.5


def run() -> tuple[dict[str, list[tuple[str, list[dict[str, Any]]]]], float]:
    """Every panel's series, by panel title (in the dashboard's order), and the run's start."""
    panels: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    with with_outage(PHASES, DURATION, workers=4, reset_timeout=2.0, scrape=SCRAPE) as (base, t0, t1):
        for title, expr, legend in dashboard_targets():
            result = query_range(base, concrete(expr, "2s"), t0, t1, STEP)
            panels.setdefault(title, []).append((legend, result))
    return panels, t0


def right_axis_refs() -> dict[str, set[str]]:
    """Panel title -> the refIds its overrides draw against a right-hand axis."""
    import json

    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for panel in board["panels"]:
        for o in panel["fieldConfig"]["overrides"]:
            if {"id": "custom.axisPlacement", "value": "right"} in o["properties"]:
                out.setdefault(panel["title"], set()).add(o["matcher"]["options"])
    return out


def label(legend: str, metric: dict[str, str]) -> str:
    """Grafana's legend format: {{label}} replaced by the series' label."""
    text = legend
    for k, v in metric.items():
        text = text.replace("{{" + k + "}}", v)
    return text.replace("inventory ", "").strip()


def draw(panels: dict[str, list[tuple[str, list[dict[str, Any]]]]], t0: float, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = list(panels)
    cols = 2
    rows = (len(titles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.6 * rows), sharex=True)
    shade = {"503": "#f6c4c4", "hang": "#f9dfa8"}
    ends = [p[0] for p in PHASES[1:]] + [DURATION]
    right = right_axis_refs()
    for ax, title in zip(axes.flat, titles, strict=False):
        for (start, what), end in zip(PHASES, ends, strict=True):
            if what in shade:
                ax.axvspan(start, end, color=shade[what], zorder=0)
        ax.grid(alpha=0.3)
        twin = ax.twinx() if title in right else None
        for i, (legend, result) in enumerate(panels[title]):
            on = twin if twin is not None and chr(ord("A") + i) in right[title] else ax
            color = "#6a1b9a" if on is twin else None
            for series in result:
                ts = [float(t) - t0 for t, _ in series["values"]]
                vs = [float(v) if v not in ("NaN", "+Inf", "-Inf") else None for _, v in series["values"]]
                if title == "Breaker state":
                    ax.step(ts, vs, where="post", lw=2, color="#c62828")
                    ax.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
                    continue
                if title.endswith("percentiles"):
                    vs = [None if v is None else v * 1000 for v in vs]
                text = label(legend, series["metric"]) + (" (right)" if on is twin else "")
                on.plot(ts, vs, lw=1.6, label=text, **({"color": color} if color else {}))
        ax.set_title(title + (" (ms)" if title.endswith("percentiles") else ""), fontsize=10)
        handles, names = ax.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, names = handles + more[0], names + more[1]
        if handles:
            ax.legend(handles, names, fontsize=7, loc="upper left", ncol=2)
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds (red: peer answers 503; yellow: peer hangs)")
    fig.suptitle("dashboards/grafana/resilient_client.json, each panel's own queries run by a real "
                 "Prometheus scraping a loopback outage", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "dashboard.png"))
    args = ap.parse_args()
    panels, t0 = run()
    draw(panels, t0, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
