"""The per-layer quantization report (`edgevlm quantize`) and the mixed plan (`export --quant mixed`).

Calibration inputs are the first N scenes of the corpus' val split (never trained on, not the
test split the accuracy is reported on), prepared exactly as training does
(edgevlm.train.scenes_data: the runtime's preprocessing and prompt, then the first reference
caption and EOS, teacher-forced), one image per forward pass so no padding enters the
statistics. Each linear gets the format its graph gets under --quant (PLAN).
"""

from __future__ import annotations

import dataclasses
import json

import torch

from edgevlm.errors import ConfigError
from edgevlm.export.quant_mixed import BUDGET, MixedPlan, choose_8bit, selection_record
from edgevlm.export.quant_torch import layer_errors, linears

CALIBRATION = 8  # default number of calibration images
# format of each graph's linears per --quant, as export/quantize.py quantizes the graphs
PLAN = {
    "int8": {"vision_encoder": "int8", "decoder": "int8"},
    "int4": {"vision_encoder": "int4_int8", "decoder": "int4"},  # vision: 4-bit weights run as int8
    "mixed": {"vision_encoder": "int4_int8", "decoder": "int4"},  # + the 8-bit exceptions, int8_block
}


def graph_of(layer: str) -> str:
    return "vision_encoder" if layer.startswith("vision.") else "decoder"


def eos_id(eos_token_ids, special_tokens: dict) -> int:
    """The token that ends a calibration caption: the generation's first EOS, else the tokenizer's."""
    ids = list(eos_token_ids or ()) or list(special_tokens.get("eos") or ())
    if not ids:
        raise ConfigError("the checkpoint names no EOS token; calibration captions need one")
    return int(ids[0])


def calibration_batches(tokenizer, prompt, preprocess, eos_id: int, n: int = CALIBRATION):
    """[(pixel_values [1, 3, H, W], input_ids [1, S])] for the first n val scenes. prompt and
    preprocess: PromptConfig / PreprocessConfig (or their dicts)."""
    from edgevlm.data.datasets import read_scenes
    from edgevlm.image import PreprocessConfig
    from edgevlm.prompt import PromptConfig, Prompter
    from edgevlm.train.scenes_data import CaptionBatches

    if isinstance(prompt, dict):
        prompt = PromptConfig.from_dict(prompt)
    if isinstance(preprocess, dict):
        preprocess = PreprocessConfig.from_dict(preprocess)
    single = dataclasses.replace(preprocess, do_split=False)  # one tile per image, as training
    data = CaptionBatches(read_scenes("val", n), Prompter(tokenizer, prompt), single, eos_id, eos_id, 1)
    out = []
    for item in data.items:
        pixels, prompt_ids, caption_ids = data.encode(item)  # [3, H, W], [P], [C]
        out.append((torch.from_numpy(pixels)[None], torch.tensor([prompt_ids + caption_ids])))
    return out


def quant_report(model, batches, quant: str, budget: float = BUDGET) -> dict:
    """{"quant", "calibration_images", "layers": [row per nn.Linear], "mixed": selection or None}.
    A row: layer, graph, shape [N, K], format, max_abs, rel_rms (and int4_rel_rms under mixed)."""
    if quant not in PLAN:
        raise ValueError(f"no per-layer report for {quant!r}; one of {', '.join(PLAN)}")
    mods = linears(model)
    wanted = {name: (PLAN[quant][graph_of(name)],) for name in mods}
    if quant == "mixed":
        wanted.update({n: ("int4", "int8_block") for n in mods if graph_of(n) == "decoder"})
    errors = layer_errors(model, batches, wanted)
    mixed = None
    if quant == "mixed":
        decoder = [n for n in mods if graph_of(n) == "decoder"]
        sensitivity = {n: errors[n]["int4"]["rel_rms"] for n in decoder}
        elements = {n: mods[n].weight.numel() for n in decoder}
        kept = choose_8bit(sensitivity, elements, budget)
        mixed = selection_record(sensitivity, elements, kept, budget, len(batches),
                                 {n: errors[n]["int8_block"]["rel_rms"] for n in decoder})
    rows = []
    for name, mod in mods.items():
        fmt = wanted[name][0]
        if mixed is not None and graph_of(name) == "decoder":
            fmt = "int8_block" if any(r["layer"] == name for r in mixed["int8_layers"]) else "int4"
        row = {"layer": name, "graph": graph_of(name), "shape": list(mod.weight.shape), "format": fmt,
               **errors[name][fmt]}
        if mixed is not None and graph_of(name) == "decoder":
            row["int4_rel_rms"] = errors[name]["int4"]["rel_rms"]
        rows.append(row)
    return {"quant": quant, "calibration_images": len(batches), "layers": rows, "mixed": mixed}


def mixed_plan(model, tokenizer, prompt, preprocess, eos_id: int, n: int = CALIBRATION,
               budget: float = BUDGET) -> MixedPlan:
    """Measure the decoder's int4 sensitivity on n calibration images and choose the 8-bit layers."""
    report = quant_report(model, calibration_batches(tokenizer, prompt, preprocess, eos_id, n), "mixed", budget)
    mods = linears(model)
    kept = [r["layer"] for r in report["mixed"]["int8_layers"]]
    return MixedPlan(report["mixed"], {n: mods[n].weight.detach().float().numpy().copy() for n in kept})


def format_table(report: dict) -> str:
    """The report as a fixed-width text table, worst layers visible at a glance."""
    mixed = report["mixed"] is not None
    head = f"{'layer':44s} {'shape':>11s} {'format':>10s} {'max_abs':>10s} {'rel_rms':>9s}"
    lines = [f"--quant {report['quant']}: weight-only error of each linear's output on "
             f"{report['calibration_images']} calibration images (scenes val)",
             head + (f" {'int4 rel_rms':>13s}" if mixed else "")]
    for r in report["layers"]:
        shape = "x".join(str(d) for d in r["shape"])
        line = f"{r['layer']:44s} {shape:>11s} {r['format']:>10s} {r['max_abs']:10.3e} {r['rel_rms']:9.4f}"
        lines.append(line + (f" {r['int4_rel_rms']:13.4f}" if "int4_rel_rms" in r else ""))
    for graph in ("vision_encoder", "decoder"):
        errs = [r["rel_rms"] for r in report["layers"] if r["graph"] == graph]
        if errs:
            lines.append(f"{graph}: {len(errs)} linears, rel_rms mean {sum(errs) / len(errs):.4f}, max {max(errs):.4f}")
    if mixed:
        m = report["mixed"]
        lines.append(f"mixed: {len(m['int8_layers'])} decoder linears kept at 8 bit ({m['used']:.1%} of decoder "
                     f"linear weights, budget {m['budget']:.0%}), {m['int4_layers']} at 4 bit; largest int4 "
                     f"rel_rms left at 4 bit {m['largest_int4_rel_rms_left_at_4bit']:.4f}")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
