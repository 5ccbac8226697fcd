"""Regenerate tests/golden/default_captions.json — only after retraining the default model.

    python tests/golden/make_golden.py

Records the default bundle's greedy caption (text and token ids) for every shipped sample
image. test_golden.py then holds both the ONNX runtime and the PyTorch checkpoint to it.
"""

import json
from pathlib import Path

import edgevlm

ROOT = Path(__file__).resolve().parents[2]


def main():
    vlm = edgevlm.load(threads=1)
    golden = {}
    for path in sorted((ROOT / "edgevlm" / "assets" / "samples").glob("*.png")):
        result = vlm.run(path)
        golden[path.name] = {"caption": result.text, "token_ids": result.token_ids}
    out = Path(__file__).parent / "default_captions.json"
    out.write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps(golden, indent=2))


if __name__ == "__main__":
    main()
