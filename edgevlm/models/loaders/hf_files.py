"""Reading a Hugging Face checkpoint directory's files safely: JSON configs, safetensors, chat template.

    model.safetensors                       one file, or
    model.safetensors.index.json            {"weight_map": {tensor name: shard file}}
    model-00001-of-0000N.safetensors ...    the shards it names

Tensors are only ever read from safetensors (never pickle). Names, dtypes and shapes are
checked against what the caller expects before any tensor data is read; every mismatch is a
one-line CheckpointError naming the tensor. bf16 / fp16 weights are widened to fp32.

The chat template (Jinja) is rendered here, at export time, as transformers renders it; jinja2
is an export-time dependency only.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from edgevlm.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
PROMPT_MARK = "EDGEVLM_PROMPT_MARK"  # stands for the user text while rendering a chat template


def read_json(path: Path, required: bool = True) -> dict | None:
    """A JSON object from `path`; None if it is absent and not required."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path.parent.name}: {path.name} not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is malformed: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is malformed: expected a JSON object")
    return data


def _inside(root: Path, name: str) -> Path:
    """The shard file `name`, named relative to `root` without leaving it (no absolute path, no
    ".."). A shard that is itself a symlink is fine: the Hugging Face cache stores snapshots so."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"{INDEX_FILE}: shard file name {name!r} is not a plain file in the checkpoint")
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"{root.name}: shard file {name} listed in {INDEX_FILE} is missing")
    return path


class SafetensorsWeights:
    """Every tensor of a single-file or sharded safetensors checkpoint, read lazily."""

    def __init__(self, root: Path):
        self.root = root
        if (root / INDEX_FILE).is_file():
            weight_map = read_json(root / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{INDEX_FILE} is malformed: no weight_map")
            files = {name: _inside(root, shard) for name, shard in weight_map.items()}
        elif (root / SINGLE_FILE).is_file():
            files = None
        else:
            raise CheckpointError(f"{root.name}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors weights are read)")
        self._handles = {}
        self._file_of: dict[str, Path] = {}
        for path in sorted(set(files.values())) if files else [root / SINGLE_FILE]:
            handle = self._open(path)
            for name in handle.keys():
                if files is not None and files.get(name) != path:
                    continue  # a shard may hold tensors the index does not list; the index decides
                self._file_of[name] = path
        if files is not None:
            missing = sorted(set(files) - set(self._file_of))
            if missing:
                raise CheckpointError(f"tensor {missing[0]} is listed in {INDEX_FILE} but not in its shard")

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{path.name} is not a readable safetensors file: "
                                      f"{str(exc).splitlines()[0][:160]}") from None
        return self._handles[path]

    def names(self) -> set[str]:
        return set(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _slice(self, name: str):
        if name not in self._file_of:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint")
        return self._open(self._file_of[name]).get_slice(name)

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """CheckpointError unless tensor `name` exists, is fp32/bf16/fp16 and has `shape`."""
        sl = self._slice(name)
        dtype = sl.get_dtype()
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor {name} has dtype {dtype}; expected one of {', '.join(FLOAT_DTYPES)}")
        got = tuple(sl.get_shape())
        if got != tuple(shape):
            raise CheckpointError(f"tensor {name} has shape {list(got)} but the config implies {list(shape)}")

    def load(self, name: str) -> torch.Tensor:
        """One tensor as fp32 (call `check` first)."""
        try:
            tensor = self._open(self._file_of[name]).get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"tensor {name} cannot be read: {str(exc).splitlines()[0][:160]}") from None
        return tensor.to(torch.float32)


def load_checked(weights: SafetensorsWeights, expected: dict[str, tuple[int, ...]],
                 ignored: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """{name: fp32 tensor} for every expected name, after checking all names, dtypes and
    shapes first. Tensors the checkpoint has beyond `expected` and `ignored` are an error."""
    unexpected = sorted(weights.names() - set(expected) - set(ignored))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"unexpected tensor {unexpected[0]}{more} in the checkpoint; "
                              "it does not match its config")
    for name, shape in expected.items():
        weights.check(name, shape)
    return {name: weights.load(name) for name in expected}


# --------------------------------------------------------------------------- chat template


def token_text(value) -> str | None:
    """tokenizer_config.json stores special tokens as strings or {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def chat_template_source(root: Path, tok_cfg: dict) -> str:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json, then tokenizer_config.json."""
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    source = (read_json(root / "chat_template.json", required=False) or {}).get("chat_template")
    source = source or tok_cfg.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(source, str) or not source.strip():
        raise CheckpointError(f"{root.name}: no chat template (chat_template.jinja, chat_template.json "
                              "or tokenizer_config.json chat_template)")
    return source


def render_chat_template(source: str, special_tokens: dict) -> str:
    """Render one user turn [image, text] + the generation prompt, as transformers'
    apply_chat_template does (sandboxed jinja2, trim_blocks, lstrip_blocks)."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise CheckpointError("reading a chat template needs jinja2: pip install 'edgevlm[export]'") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_MARK}]}]
    try:
        return env.from_string(source).render(messages=messages, add_generation_prompt=True, **special_tokens)
    except jinja2.TemplateError as exc:
        raise CheckpointError(f"chat template cannot be rendered: {str(exc).splitlines()[0][:160]}") from None
