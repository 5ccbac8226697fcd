"""PNG charts of `edgevlm bench` results: a per-stage breakdown and a thread sweep.

matplotlib is optional (the `bench` extra): the runtime never needs it, so it is imported
only here, and `require_matplotlib` lets the CLI fail before any timing is done.
"""

from __future__ import annotations

from pathlib import Path

from edgevlm.errors import ConfigError

# stages that partition a run (ttft and per-tile/per-token figures overlap them, so they are left out)
BREAKDOWN = ("preprocess", "vision_encode", "embed", "prefill", "decode")
SWEEP = ("total", "ttft", "vision_encode", "prefill", "decode_per_token")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'edgevlm[bench]'") from None


def _breakdown_ms(result: dict) -> dict[str, tuple[float, float, float]]:
    """stage -> (median, min, max) in ms; decode is all steps of a run (per-token x steps)."""
    stages = result["stages_ms"]
    steps = result["new_tokens"] - 1
    out = {}
    for name in BREAKDOWN:
        s = stages["decode_per_token"] if name == "decode" else stages[name]
        scale = steps if name == "decode" else 1
        out[name] = (s["median"] * scale, s["min"] * scale, s["max"] * scale)
    return out


def plot(results: list[dict], path: Path) -> None:
    """Left: stage breakdown bars (median, min-max whiskers), one bar group per thread count.
    Right: medians of the main stages against the thread count."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, (bars, sweep) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        data = _breakdown_ms(result)
        x = [i + (k - (len(results) - 1) / 2) * width for i in range(len(BREAKDOWN))]
        med = [data[n][0] for n in BREAKDOWN]
        err = [[m - data[n][1] for m, n in zip(med, BREAKDOWN)], [data[n][2] - m for m, n in zip(med, BREAKDOWN)]]
        bars.bar(x, med, width, yerr=err, capsize=3, label=f"{result['threads']} thread(s)")
    bars.set_xticks(range(len(BREAKDOWN)), [*BREAKDOWN[:-1], f"decode\n({results[0]['new_tokens'] - 1} steps)"])
    bars.set_ylabel("ms (median, min-max)")
    first = results[0]
    bars.set_title(f"{first['bundle']}: {first['image']}, {first['prompt_tokens']} prompt tokens, "
                   f"{first['new_tokens']} new", fontsize=9)
    bars.legend()

    threads = [r["threads"] for r in results]
    for name in SWEEP:
        sweep.plot(threads, [r["stages_ms"][name]["median"] for r in results], marker="o", label=name)
    sweep.set_xticks(threads)
    sweep.set_xlabel("threads")
    sweep.set_ylabel("ms (median)")
    sweep.set_yscale("log")  # total and per-token differ by orders of magnitude
    for axis in (sweep.yaxis.set_major_formatter, sweep.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))  # plain ms, not 6x10^1
    sweep.set_title("thread sweep", fontsize=9)
    sweep.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise ConfigError(f"cannot write --plot {Path(path).name}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
