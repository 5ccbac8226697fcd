"""llama.cpp through llama-cpp-python: the Llama checkpoint dir converted to GGUF by llama.cpp's
own convert_hf_to_gguf.py (q8_0 directly; q4_0 from an f16 GGUF through llama_model_quantize, the
library function behind llama-quantize), decoder timed with Llama.eval. The vision tower goes
through the same converter (--mmproj, from the VLM dir) and is timed with libmtmd, which
llama-cpp-python builds and wraps (llama_cpp.mtmd_cpp).

The wheel ships no converter: it is in the llama.cpp tree of the llama-cpp-python sdist (or any
llama.cpp checkout of the same version), e.g.
    pip download --no-deps llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    peers.py --llama-convert llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py
or the environment variable LLAMA_CPP_CONVERT. The converter also needs torch, transformers,
gguf and sentencepiece in the interpreter that runs this peer.

The converter names a BPE tokenizer's pre-tokenizer from a hash of the ids it gives a fixed text,
and refuses ids it has never seen; the random fixture's tokenizer (400 merges trained on a toy
corpus) always gives such ids, whatever its pre-tokenizer. Its pre-tokenizer is plain byte-level
BPE with GPT-2's split regex, which llama.cpp calls "gpt-2", so when the stock converter refuses,
this file reruns it with that one name pinned (python peers_llamacpp.py PRE CONVERTER ARGS...),
and then checks that llama.cpp's tokenizer, reading the GGUF, gives the same ids as the
checkpoint's tokenizer.json on a mixed text. Only the text tokenizer depends on the name: the
timed work is ids in, ids out.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import time
from pathlib import Path

from peers_util import missing_modules, run_tool, shown, versions as _versions

TITLE = "llama.cpp (llama-cpp-python)"
VARIANTS = {"full": ("q4_0", "q8_0"), "smoke": ("q8_0",)}
MMPROJ = "q8_0"  # the vision tower's weights in both rows, as edgevlm's int4 row keeps its vision in int8
# byte-level BPE with GPT-2's split regex and no prefix space, as transformers/tokenizers writes it
GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# spaces, digits, punctuation, contractions and non-Latin text: where pre-tokenizers differ
PROBE_TEXT = "  Hello,  world!\n\n\tit's 2024-06-01: 3.14159 x 12345 = ?? naïve café — Привет 東京 🙂 I'M fine...  "


def _converter(spec: dict) -> Path | None:
    """--llama-convert, else $LLAMA_CPP_CONVERT, else a convert_hf_to_gguf.py on PATH."""
    found = (spec.get("llama_convert") or os.environ.get("LLAMA_CPP_CONVERT")
             or shutil.which("convert_hf_to_gguf.py"))
    return Path(found) if found and Path(found).is_file() else None


def missing(spec: dict) -> str | None:
    why = missing_modules("llama_cpp", hint="pip install llama-cpp-python builds llama.cpp from source, "
                                            "~9 min on 2 cores")
    why = why or missing_modules("gguf", "torch", "transformers", "sentencepiece",
                                 hint="llama.cpp's GGUF converter needs them")
    if why is None and _converter(spec) is None:
        why = ("no convert_hf_to_gguf.py (in the llama-cpp-python sdist's vendor/llama.cpp): pass peers.py "
               "--llama-convert PATH or set LLAMA_CPP_CONVERT")
    return why


def versions() -> dict:
    return _versions("llama-cpp-python", "gguf", "transformers", "torch")


def _pre_name(tokenizer_json: Path) -> str:
    """llama.cpp's name for the checkpoint's pre-tokenizer, for the one kind the fixture writes."""
    pre = json.loads(tokenizer_json.read_text()).get("pre_tokenizer")
    if pre != GPT2_PRE:
        raise RuntimeError(f"the converter does not know this tokenizer's pre-tokenizer {pre}")
    return "gpt-2"


def _convert(spec: dict, src: str, outfile: Path, outtype: str, *extra: str) -> tuple[str, bool]:
    """The stock converter; if it refuses the fixture's tokenizer hash, again with the name pinned.
    Returns the command as the report shows it, and whether the name was pinned."""
    converter = _converter(spec)
    args = [src, "--outfile", outfile, "--outtype", outtype, *extra]
    try:
        command, pinned = run_tool([sys.executable, converter, *args], "convert_hf_to_gguf.py"), False
    except RuntimeError as exc:
        if "pre-tokenizer was not recognized" not in str(exc):
            raise
        pre = _pre_name(Path(src) / "tokenizer.json")
        command = run_tool([sys.executable, Path(__file__).resolve(), pre, converter, *args],
                           f"convert_hf_to_gguf.py with pre-tokenizer {pre!r} pinned")
        pinned = True
    command = shown(command, spec).replace(str(Path(__file__).resolve()), "benchmarks/peers_llamacpp.py")
    return command.replace(str(converter.parent), "LLAMA_CPP"), pinned


def _check_tokenizer(gguf: Path, tokenizer_json: Path) -> None:
    """A pinned pre-tokenizer must be the right one: llama.cpp's ids equal the checkpoint's."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    got = vocab.tokenize(PROBE_TEXT.encode(), add_bos=False, special=False)
    want = Tokenizer.from_file(str(tokenizer_json)).encode(PROBE_TEXT, add_special_tokens=False).ids
    if got != want:
        raise RuntimeError(f"llama.cpp tokenizes differently from tokenizer.json: {got[:12]} vs {want[:12]}")


def prepare(spec: dict, variant: str, out) -> dict:
    import llama_cpp

    target = out / f"model-{variant}.gguf"
    first = target if variant == "q8_0" else out / "model-f16.gguf"
    command, pinned = _convert(spec, spec["llama_dir"], first, "q8_0" if variant == "q8_0" else "f16")
    if pinned:
        _check_tokenizer(first, Path(spec["llama_dir"]) / "tokenizer.json")
    if variant != "q8_0":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{variant.upper()}")
        params.nthread = spec["threads"]
        if llama_cpp.llama_model_quantize(str(first).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize to {variant} failed")
        first.unlink()
        command += f" && llama_model_quantize(f16 -> {variant}, default params)"
    command += " && " + _convert(spec, spec["vlm_dir"], out / "mmproj.gguf", MMPROJ, "--mmproj")[0]
    size = target.stat().st_size + (out / "mmproj.gguf").stat().st_size
    return {"command": command, "artifact_mb": round(size / 1e6, 1),
            **({"note": "converter's pre-tokenizer pinned to gpt-2 (it does not know the fixture's hash); "
                        "llama.cpp's ids checked equal to tokenizer.json's"} if pinned else {})}


class _Vision:
    """One vision tile through libmtmd: a random 512x512 RGB image is tokenized (mtmd's Idefics3
    preprocessing: an overview tile, then the grid tiles, each its own chunk) outside the timing,
    and the overview chunk, one tile through the SigLIP tower and the connector, is what each run
    encodes."""

    def __init__(self, mmproj: Path, llm, spec: dict):
        import numpy as np
        from llama_cpp import mtmd_cpp as mtmd

        self.mtmd = mtmd
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.print_timings, params.warmup = False, False, False
        params.n_threads = spec["threads"]
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"mtmd_init_from_file({mmproj.name}) failed")
        size = spec["tile_size"]
        rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)  # [H, W, 3]
        self.bitmap = mtmd.mtmd_bitmap_init(size, size, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        text = mtmd.mtmd_input_text()
        self.text = mtmd.mtmd_default_marker()  # kept alive: the struct holds a pointer into it
        text.text, text.text_len, text.add_special, text.parse_special = self.text, len(self.text), False, True
        self.chunks = mtmd.mtmd_input_chunks_init()
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(self.bitmap)
        if mtmd.mtmd_tokenize(self.ctx, self.chunks, ctypes.byref(text), bitmaps, 1) != 0:
            raise RuntimeError("mtmd_tokenize failed")
        images = [mtmd.mtmd_input_chunks_get(self.chunks, i) for i in range(mtmd.mtmd_input_chunks_size(self.chunks))]
        images = [c for c in images if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        self.tile = images[0]  # the overview: the whole image as one tile
        config = json.loads((Path(spec["vlm_dir"]) / "config.json").read_text())
        vc = config["vision_config"]
        want = (vc["image_size"] // vc["patch_size"]) ** 2 // config.get("scale_factor", 1) ** 2
        got = mtmd.mtmd_input_chunk_get_n_tokens(self.tile)
        if got != want:
            raise RuntimeError(f"mtmd's first image chunk has {got} tokens, one {size} px tile has {want}")
        self.info = {"vision": f"mtmd_encode_chunk on the overview tile ({got} tokens; mtmd made "
                               f"{len(images)} tiles of the image, only one is timed); mmproj {MMPROJ}"}

    def run(self) -> float:
        t = time.perf_counter()
        if self.mtmd.mtmd_encode_chunk(self.ctx, self.tile) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")
        return 1e3 * (time.perf_counter() - t)


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import numpy as np
        import llama_cpp
        from llama_cpp import Llama

        self.np, self.lib, self.spec = np, llama_cpp, spec
        p, n = len(spec["prompt_ids"]), spec["new_tokens"]
        # flash_attn: llama.cpp's own default is "auto", on wherever the backend supports it (the CPU one
        # does); llama-cpp-python's flash_attn=False default would turn it off (~10% slower decode here)
        self.llm = Llama(model_path=str(art / f"model-{variant}.gguf"), n_ctx=p + n + 8, n_batch=max(p, 32),
                         n_threads=spec["threads"], n_threads_batch=spec["threads"], flash_attn=True, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.vision = _Vision(art / "mmproj.gguf", self.llm, spec)
        self.info = {"flash_attn": "on (llama.cpp's auto; mtmd: auto)", **self.vision.info}

    def _next(self) -> int:
        """Greedy pick from the last evaluated position's logits, read from the context itself:
        without logits_all, Llama.eval no longer copies them into Llama.scores."""
        logits = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(self.np.argmax(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,))))

    def run(self) -> dict:
        llm, n = self.llm, self.spec["new_tokens"]
        vision_ms = self.vision.run()
        t1 = time.perf_counter()
        llm.reset()  # position 0; eval drops every cached position from there on
        llm.eval(self.spec["prompt_ids"])  # prefill in one batch
        token = self._next()
        t2 = time.perf_counter()
        tokens = [token]
        for _ in range(n - 1):
            llm.eval([token])
            token = self._next()
            tokens.append(token)
        t3 = time.perf_counter()
        return {"prefill_ms": 1e3 * (t2 - t1), "decode_ms_per_token": 1e3 * (t3 - t2) / max(n - 1, 1),
                "vision_ms_per_tile": vision_ms, "tokens": len(tokens)}


def _pinned_converter(pre: str, converter: Path, args: list[str]) -> None:
    """Run convert_hf_to_gguf.py in this process with its pre-tokenizer lookup answering `pre`:
    the stock converter otherwise, same arguments, same output."""
    import runpy

    sys.path[:0] = [str(converter.parent / "gguf-py"), str(converter.parent)]  # its own gguf and conversion/
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = [str(converter), *args]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":  # python peers_llamacpp.py PRE CONVERTER [converter arguments]
    _pinned_converter(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
