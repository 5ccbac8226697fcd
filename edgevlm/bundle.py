"""Open and verify a model bundle (the directory `edgevlm export` writes).

    bundle/
      edgevlm.json          format name + version, config, graph I/O, preprocessing, prompt,
                            special tokens, generation defaults, sha256 of every file
      vision_encoder.onnx   embed_tokens.onnx   decoder.onnx   tokenizer.json
      optional (`edgevlm export --format ort`): vision_encoder.ort embed_tokens.ort decoder.ort
      (manifest key "ort_graphs") and required_operators.config, checksummed like the rest

A bundle is refused, with a one-line BundleError, when its format or version is unknown,
a file is missing or outside the directory, or a file's sha256 does not match. (A graph's
external data is checked where ONNX Runtime reads it: edgevlm.runtime.sessions.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgevlm.errors import BundleError, EdgeVLMError

FORMAT_NAME = "edgevlm-bundle"
FORMAT_VERSION = 1
MANIFEST = "edgevlm.json"
GRAPHS = ("vision_encoder", "embed_tokens", "decoder")
MODEL_FORMATS = ("onnx", "ort")
REQUIRED_KEYS = ("format", "format_version", "architecture", "config", "graphs", "preprocess",
                 "prompt", "special_tokens", "generation", "files")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_bundle_path() -> Path:
    return Path(__file__).parent / "assets" / "default"


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name

    def graph_path(self, graph: str, model_format: str = "onnx") -> Path:
        if model_format == "ort":
            if "ort_graphs" not in self.manifest:
                raise BundleError(f"bundle {self.path.name} has no ORT-format graphs; "
                                  "re-export it with `edgevlm export --format ort` or use --model-format onnx")
            return _inside(self.path, self.manifest["ort_graphs"][graph])
        return self.path / self.manifest["graphs"][graph]["file"]


def _inside(root: Path, name: str) -> Path:
    """Resolve a manifest file name, refusing anything that leaves the bundle directory."""
    if (not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute()
            or ".." in Path(name).parts):
        raise BundleError(f"bundle lists an unsafe file name {name!r}")
    path = root / name
    if path.is_symlink() or root.resolve() not in path.resolve().parents:
        raise BundleError(f"bundle file {name} points outside the bundle directory")
    return path


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path.name or path}: not a bundle directory (it does not exist or is a file)")
    if not manifest_path.is_file():
        raise BundleError(f"{path.name}: not an edgevlm bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST} is malformed: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} is malformed: expected a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{MANIFEST}: unknown format {manifest.get('format')!r} (expected {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle format version {version!r} is not supported (this edgevlm reads version {FORMAT_VERSION}); re-export the model")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{MANIFEST} is missing key(s): {', '.join(missing)}")
    return manifest


def open_bundle(path=None, verify: bool = True) -> Bundle:
    """Read the manifest and (by default) check every listed file's sha256."""
    path = Path(path) if path is not None else default_bundle_path()
    manifest = read_manifest(path)
    files, graphs = manifest["files"], manifest["graphs"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{MANIFEST}: 'files' must map file names to sha256")
    if not isinstance(graphs, dict) or set(graphs) != set(GRAPHS) or not all(
            isinstance(graphs[g], dict) and isinstance(graphs[g].get("file"), str) for g in GRAPHS):
        raise BundleError(f"{MANIFEST}: graphs must be exactly {', '.join(GRAPHS)}, each with a 'file'")
    needed = {graphs[g]["file"] for g in GRAPHS} | {"tokenizer.json"}
    if "ort_graphs" in manifest:
        ort_graphs = manifest["ort_graphs"]
        if not isinstance(ort_graphs, dict) or set(ort_graphs) != set(GRAPHS) or not all(
                isinstance(ort_graphs[g], str) and ort_graphs[g].endswith(".ort") for g in GRAPHS):
            raise BundleError(f"{MANIFEST}: ort_graphs must map exactly {', '.join(GRAPHS)} to .ort files")
        needed |= set(ort_graphs.values())
    if "required_operators" in manifest:
        if not isinstance(manifest["required_operators"], str):
            raise BundleError(f"{MANIFEST}: required_operators must be a file name")
        needed.add(manifest["required_operators"])
    unlisted = sorted(needed - set(files))
    if unlisted:
        raise BundleError(f"{MANIFEST} lists no checksum for {', '.join(unlisted)}")
    for name, expected in files.items():
        file_path = _inside(path, name)
        if not file_path.is_file():
            raise BundleError(f"bundle file {name} is missing")
        if verify and sha256_file(file_path) != expected:
            raise BundleError(f"bundle file {name} is corrupt (sha256 mismatch); re-export or re-download the bundle")
    return Bundle(path=path, manifest=manifest)


def describe(bundle: Bundle) -> dict:
    """A short summary for `edgevlm info`."""
    m = bundle.manifest
    sizes = {name: (bundle.path / name).stat().st_size for name in m["files"]}
    return {
        "path": str(bundle.path),
        "format": f"{m['format']} v{m['format_version']}",
        "architecture": m["architecture"],
        "precision": {g: m["graphs"][g].get("precision", "fp32") for g in GRAPHS},
        "size_mb": round(sum(sizes.values()) / 1e6, 2),
        "files": sizes,
        "config": m["config"],
        "validation": m.get("validation", {}),
    }


__all__ = ["Bundle", "open_bundle", "read_manifest", "describe", "sha256_file", "BundleError", "EdgeVLMError",
           "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "GRAPHS", "MODEL_FORMATS"]
