"""The comparison table of benchmarks/peers.py: markdown, JSON and (with matplotlib) a PNG.

Ratios are speed-ups over the PyTorch eager row (its median / the row's median), so "4.0x"
means four times faster than PyTorch on the same model, workload and machine, in the same run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from smolvlm_latency import _stats  # median/min/max, rounded, as the other SmolVLM benchmark reports them

METRICS = {"prefill_ms": "prefill ms", "decode_ms_per_token": "decode ms/token", "vision_ms_per_tile": "vision ms/tile"}
BASELINE = "torch"


def build(command: str, args, model: dict, spec: dict, rows: list[dict], skipped: list[dict], device: dict,
          load_avg: list[float]) -> dict:
    report = {"benchmark": "peers", "command": command,
              "workload": {"model": f"{model['kind']} shape, random weights", "prompt_tokens": args.prompt_tokens,
                           "new_tokens": args.new_tokens, "threads": args.threads, "batch": 1, "repeat": args.repeat,
                           "warmup": args.warmup, "tile_size": spec["tile_size"],
                           "settle_s": args.settle},
              "device": device, "load_avg_1m": load_avg, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "rows": rows, "skipped": skipped}
    summarise(rows)
    report["paired"] = paired(rows)
    return report


def stats(values: list[float]) -> dict | None:
    return {**_stats(values), "n": len(values)} if values else None


def summarise(rows: list[dict]) -> None:
    """Per row: each metric's median/min/max over the repeats, and its speed-up over the baseline."""
    for row in rows:
        row["stats"] = {m: stats([r[m] for r in row["runs"] if r.get(m) is not None]) for m in METRICS}
    base = next((r for r in rows if r["adapter"] == BASELINE), None)
    for row in rows:
        row["speedup_vs_torch"] = {
            m: round(base["stats"][m]["median"] / s["median"], 2)
            for m, s in row["stats"].items() if s and base and base["stats"].get(m)}


def paired(rows: list[dict], ours: str = "edgevlm") -> list[dict]:
    """edgevlm's speed-up over every other row, round by round: in round r each peer ran once,
    back to back, so peer_r / ours_r cancels most of the machine's drift between rounds (it moves
    every runtime by 10-20% over minutes here). The median of those ratios, with min and max."""
    out = []
    for mine in (r for r in rows if r["adapter"] == ours):
        for other in (r for r in rows if r["adapter"] != ours):
            for metric in METRICS:
                pairs = [(a[metric], b[metric]) for a, b in zip(mine["runs"], other["runs"])
                         if a.get(metric) and b.get(metric)]
                if pairs:
                    out.append({"ours": mine["variant"], "peer": f"{other['title']} {other['variant']}",
                                "metric": metric, "n": len(pairs), **_stats([b / a for a, b in pairs])})
    return out


def _cell(s: dict | None, digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]" if s else "n/a"


def markdown(report: dict) -> str:
    w = report["workload"]
    lines = [f"# Peers side by side: {w['model']}", "",
             f"Random weights; prompt {w['prompt_tokens']} tokens, exactly {w['new_tokens']} new tokens (greedy, "
             f"EOS ignored), batch 1, {w['threads']} threads; vision: one {w['tile_size']} px tile. Median "
             f"[min–max] of {w['repeat']} repeats after {w['warmup']} warm-up, runtimes in alternation. "
             f"×: speed-up over PyTorch eager (higher is faster).", "",
             "| runtime | weights | prefill ms | × | decode ms/token | × | vision ms/tile | × | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        st, up = row["stats"], row["speedup_vs_torch"]
        cells = []
        for metric, digits in (("prefill_ms", 1), ("decode_ms_per_token", 2), ("vision_ms_per_tile", 1)):
            cells += [_cell(st[metric], digits), f"{up[metric]:.2f}" if metric in up else ""]
        rss = max((r.get("peak_rss_mb", 0) for r in row["runs"]), default=0)
        lines.append(f"| {row['title']} | {row['variant']} | " + " | ".join(cells) + f" | {rss:.0f} |")
    if report.get("paired"):
        lines += ["", "edgevlm's speed-up over each peer, round by round (peer ms / edgevlm ms in the same "
                      "round; median [min–max] over the rounds):", ""]
        lines += [f"- edgevlm {p['ours']} vs {p['peer']}, {METRICS[p['metric']]}: {p['median']:.2f}× "
                  f"[{p['min']:.2f}–{p['max']:.2f}]" for p in report["paired"]]
    if report["skipped"]:
        lines += ["", "Skipped (nothing measured):", ""]
        lines += [f"- {s['title']}{' ' + s['variant'] if s.get('variant') else ''}: {s['reason']}"
                  for s in report["skipped"]]
    lines += ["", "Versions and conversion commands:", ""]
    for row in report["rows"]:
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
        convert = f"; converted in {row['convert_s']:.0f} s" if row.get("convert_s") else ""
        extra = {"quality gate": row.get("quality_gate"), "note": row.get("note")}  # from prepare
        notes = "".join(f"; {k}: {v}" for k, v in {**row["info"], **{k: v for k, v in extra.items() if v}}.items())
        lines.append(f"- {row['title']} {row['variant']} ({versions}{convert}{notes}): `{row['command']}`")
    d = report["device"]
    lines += ["", f"Machine: {d['cpu']}, {d['cores']} cores ({', '.join(d['isa'])}), {d['ram_gb']} GB, {d['os']}; "
                  f"load average {report['load_avg_1m'][0]} before, {report['load_avg_1m'][1]} after.",
              f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """One panel per metric: a bar per runtime row (median, min–max whiskers), like plot.py's."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4.5))
    for ax, (metric, label) in zip(axes, METRICS.items()):
        rows = [r for r in report["rows"] if r["stats"][metric]]
        med = [r["stats"][metric]["median"] for r in rows]
        err = [[m - r["stats"][metric]["min"] for m, r in zip(med, rows)],
               [r["stats"][metric]["max"] - m for m, r in zip(med, rows)]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [f"{r['adapter']}\n{r['variant']}" for r in rows], fontsize=8)
        ax.set_ylabel(f"{label} (median, min–max)")
        ax.set_title(label, fontsize=9)
    w = report["workload"]
    fig.suptitle(f"{w['model']}: prompt {w['prompt_tokens']}, {w['new_tokens']} new tokens, "
                 f"{w['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def write(report: dict, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401  (optional: the `bench` extra)
        report["plot"] = f"{stem}.png"
    except ImportError:
        report["plot"] = "not drawn: matplotlib is not installed"
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report))
    if report["plot"].endswith(".png"):
        plot(report, out / report["plot"])
        paths.append(out / report["plot"])
    return paths
