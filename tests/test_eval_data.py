"""`edgevlm eval --data`: caption quality on a JSONL / COCO / folder dataset, fidelity on its images."""

import json

from click.testing import CliRunner

from edgevlm.cli import main
from edgevlm.data import scenes


def _last_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_on_a_jsonl_dataset(tiny_bundle, tmp_path):
    lines = []
    for i, scene in enumerate(scenes.split("val", 3)):
        scenes.render(scene, 32).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "captions": scenes.captions(scene)}))
    lines.append(json.dumps({"image": "0.png"}))  # unlabeled: nothing to score against, skipped
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    record = _last_json(CliRunner().invoke(main, ["eval", str(tiny_bundle[0]), "--data", str(tmp_path / "d.jsonl"),
                                                  "--threads", "1"]))
    assert record["images"] == 3 and {"BLEU-1", "BLEU-4", "CIDEr-D", "model"} <= set(record)
    assert "exact_match" not in record  # a scenes-only metric


def test_eval_on_an_unlabeled_folder_needs_a_reference(tiny_bundle, tmp_path):
    for i, scene in enumerate(scenes.split("val", 2)):
        scenes.render(scene, 32).save(tmp_path / f"{i}.png")
    alone = CliRunner().invoke(main, ["eval", str(tiny_bundle[0]), "--data", str(tmp_path), "--threads", "1"])
    assert alone.exit_code == 2 and "no reference captions" in alone.stderr
    record = _last_json(CliRunner().invoke(main, ["eval", str(tiny_bundle[0]), "--data", str(tmp_path),
                                                  "--reference", str(tiny_bundle[0]), "--threads", "1"]))
    assert record["token_agreement"] == 1.0 and record["kl_ref_cand"] < 1e-6 and "BLEU-4" not in record
