"""Accuracy of each precision on the default model's held-out test split (issue 4).

    python benchmarks/quant_accuracy.py [--checkpoint edgevlm/assets/default_checkpoint] [--scenes 500]

Exports the checkpoint with fused kernels at fp32, int8, int4 and mixed (`edgevlm export
--attention fused --quant Q`), then scores each bundle with `edgevlm eval --reference FP32`:
CIDEr-D, BLEU-4, exact match, greedy-token agreement with fp32 and mean per-token KL to fp32.
Targets (relative CIDEr-D loss against fp32): int8 <= 1%, int4 and mixed <= 3%.
Writes benchmarks/results/quant_accuracy.{json,md}.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from cli_run import edgevlm_cli

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_LOSS = {"fp32": 0.0, "int8": 0.01, "int4": 0.03, "mixed": 0.03}


@click.command()
@click.option("--checkpoint", default="edgevlm/assets/default_checkpoint", show_default=True,
              type=click.Path(exists=True, path_type=Path))
@click.option("--scenes", default=500, show_default=True)
@click.option("--work", default="runs/quant_accuracy", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", default=str(RESULTS / "quant_accuracy"), show_default=True)
def main(checkpoint, scenes, work, out):
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for quant in TARGET_LOSS:
        bundle = work / f"{quant}_bundle"
        edgevlm_cli(["export", checkpoint, "-o", bundle, "--attention", "fused", "--quant", quant, "--overwrite"])
        metrics = work / f"{quant}_metrics.json"
        ref = [] if quant == "fp32" else ["--reference", work / "fp32_bundle"]
        edgevlm_cli(["eval", bundle, "--scenes", scenes, "--json", metrics, *ref])
        m = json.loads(metrics.read_text())
        size = sum(f.stat().st_size for f in bundle.iterdir() if f.is_file())
        rows.append({"precision": quant, "bundle_mb": round(size / 1e6, 2), "CIDEr-D": m["CIDEr-D"],
                     "BLEU-4": m["BLEU-4"], "exact_match": m["exact_match"],
                     "token_agreement": m.get("token_agreement"), "kl_to_fp32": m.get("kl_ref_cand")})
    base = rows[0]["CIDEr-D"]
    for row in rows:
        row["cider_loss_vs_fp32"] = round(1 - row["CIDEr-D"] / base, 4)
        row["target_loss"] = TARGET_LOSS[row["precision"]]
        row["meets_target"] = row["cider_loss_vs_fp32"] <= row["target_loss"]
    result = {"checkpoint": str(checkpoint), "scenes": scenes, "split": "test", "rows": rows,
              "command": f"python benchmarks/quant_accuracy.py --checkpoint {checkpoint} --scenes {scenes}"}
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| precision | bundle MB | CIDEr-D | loss vs fp32 (target) | BLEU-4 | exact | agreement with fp32 | KL to fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["token_agreement"] is None else f"{r['token_agreement']:.3f}"
        kl = "-" if r["kl_to_fp32"] is None else f"{r['kl_to_fp32']:.4f}"
        lines.append(f"| {r['precision']} | {r['bundle_mb']} | {r['CIDEr-D']:.3f} | "
                     f"{100 * r['cider_loss_vs_fp32']:.2f}% (≤ {100 * r['target_loss']:.0f}%"
                     f"{', met' if r['meets_target'] else ', NOT met'}) | {r['BLEU-4']:.3f} | {r['exact_match']:.3f} | "
                     f"{agree} | {kl} |")
    lines += ["", f"{scenes} held-out test scenes; fused kernels; `{result['command']}`"]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
