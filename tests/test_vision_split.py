"""A quantized vision graph cut at its attention nodes (export/vision_split.py) and run with the
bf16 kernel between the parts (edgevlm/runtime/vision_split.py)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import edgevlm
from edgevlm.cli import main
from edgevlm.errors import BundleError, ConfigError
from edgevlm.export.vision_split import ort_attention
from edgevlm.runtime.vision_split import SplitVision
from tests.conftest import tiny_scene_setup
from tests.test_attention_kernel import needs_kernel
from tests.test_golden import SAMPLES
from tests.test_packed_weights import _mutated


def _head64_setup():
    """The tiny scene model with vision heads of 64 (the kernel's size) and 64 patches a tile."""
    import torch

    from edgevlm.config import VisionConfig
    from edgevlm.models.vlm import VLM
    from edgevlm.prompt import PromptConfig

    _, tokenizer, pre, _, gen, special = tiny_scene_setup()
    base = tiny_scene_setup()[0].cfg
    cfg = base.replace(vision=VisionConfig(image_size=32, patch_size=4, hidden_size=128, num_layers=2, num_heads=2,
                                           intermediate_size=256),
                       text=base.text.replace(hidden_size=64, num_heads=4, num_kv_heads=2))
    torch.manual_seed(0)
    model = VLM(cfg).eval()
    return model, tokenizer, pre, PromptConfig(image_seq_len=cfg.image_seq_len), gen, special


@pytest.fixture(scope="module")
def split_bundles(tmp_path_factory):
    """int8 with every weight in data files; int4 (4-bit vision store) with default data files;
    fp32, which is never cut."""
    from edgevlm.export.to_onnx import export_bundle

    model, tokenizer, pre, prompt, gen, special = _head64_setup()
    out = {}
    for quant, min_bytes in (("int8", 0), ("int4", 16 << 20), ("fp32", 0)):
        out[quant] = tmp_path_factory.mktemp("split") / quant
        export_bundle(model, tokenizer, out[quant], preprocess=pre.to_dict(), prompt=prompt.to_dict(),
                      special_tokens=special, generation=gen.to_dict(), progress=False, attention="fused",
                      quant=quant, external_min_bytes=min_bytes)
    return out


def _manifest(path):
    return json.loads((path / "edgevlm.json").read_text())


def _pixels(n=2):
    return np.random.default_rng(3).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32)


def test_export_cuts_quantized_fused_vision_graphs(split_bundles):
    for quant, kinds in (("int8", ["attention"] * 2),  # two layers; int8 weights are not packed: no MLP cut
                         ("int4", ["mlp"] * 2)):  # each layer's attention, o_proj, norm and MLP in one stage
        m = _manifest(split_bundles[quant])
        split = m["graphs"]["vision_encoder"]["split"]
        assert [s["kind"] for s in split["stages"]] == kinds and len(split["parts"]) == len(kinds) + 1
        assert all(p in m["files"] for p in split["parts"])
        attention = [s if s["kind"] == "attention" else s["attention"] for s in split["stages"]]
        assert all(a["num_heads"] == 2 and a["scale"] == pytest.approx(0.125) for a in attention)
        check = m["validation"]["vision_encoder"]["split"]
        assert check["cut_rel_rms"] <= check["tolerance"] and check["mlp_stages"] == kinds.count("mlp")
        # no part holds a weight of its own: every large tensor points into the graph's data files
        for part in split["parts"]:
            model = onnx.load(str(split_bundles[quant] / part), load_external_data=False)
            assert all(len(t.raw_data) < 1024 for t in model.graph.initializer)
            if quant == "int4":  # the MLPs' nodes left the parts: their weights come from the 4-bit store
                assert not {"FastGelu", "MatMulInteger"} <= {n.op_type for n in model.graph.node} or part == split["parts"][0]
    int4 = _manifest(split_bundles["int4"])["graphs"]["vision_encoder"]["split"]
    assert int4["weights"] in _manifest(split_bundles["int4"])["files"]
    # float32 per layer: the biases of o_proj [128], fc1 [256] and fc2 [128], the norm's gamma and beta [128]
    assert (split_bundles["int4"] / int4["weights"]).stat().st_size == 2 * 4 * (128 + 256 + 128 + 2 * 128)
    assert all(s["norm"]["epsilon"] == pytest.approx(1e-6) for s in int4["stages"])
    assert "split" not in _manifest(split_bundles["fp32"])["graphs"]["vision_encoder"]


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_parts_with_onnxruntime_stages_equal_the_whole_graph(split_bundles, quant):
    """The cut alone: parts + ONNX Runtime's own MultiHeadAttention and MLP nodes between them."""
    import onnxruntime as ort

    from edgevlm.export.vision_split import ort_mlps

    path = split_bundles[quant]
    entry = _manifest(path)["graphs"]["vision_encoder"]
    split, packed = entry["split"], entry.get("packed_weights")
    names = {s[fc]["weight"] for s in split["stages"] for fc in ("fc1", "fc2", "o_proj") if fc in s}
    # the int4 graph reads an int8 file the runtime makes: expand it as the runtime does
    from edgevlm.runtime.packed_weights import unpacked_graph

    shared = [f for f in ("vision_encoder.onnx.data",) if (path / f).exists()]
    with unpacked_graph(path, "vision_encoder.onnx", packed, also=split["parts"] + shared) if packed else _here(path) as graph:
        where = graph.parent
        parts = [ort.InferenceSession(str(where / p), providers=["CPUExecutionProvider"]) for p in split["parts"]]
        whole = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        pixels = _pixels()
        (want,) = whole.run(None, {"pixel_values": pixels})
        (got,) = SplitVision(parts, split["stages"], ort_attention(), ort_mlps(graph, names, split["stages"])).run(
            None, {"pixel_values": pixels})
    assert np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()) < 1e-3


def _here(path):
    import contextlib

    return contextlib.nullcontext(path / "vision_encoder.onnx")


@needs_kernel
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_kernel_path_is_chosen_and_agrees_with_onnxruntime(split_bundles, quant):
    fast = edgevlm.load(split_bundles[quant], threads=2)
    slow = edgevlm.load(split_bundles[quant], threads=2, vision_attention="fp32")
    assert fast.vision_attention == {"int8": "bf16 kernel (edgevlm)",
                                     "int4": "bf16 kernel (edgevlm), int8 layer kernel"}[quant]
    assert slow.vision_attention == "onnxruntime"
    got, want = fast.encode_tiles(_pixels(3)), slow.encode_tiles(_pixels(3))
    assert got.shape == want.shape == (3, 16, 64)
    assert np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()) < 0.02  # bf16 q/k/v and probabilities
    image = str(SAMPLES[0])  # the whole caption path runs on both
    assert fast.run(image).prompt_tokens == slow.run(image).prompt_tokens


def test_fp32_bundle_and_fp32_option_use_onnxruntime(split_bundles):
    assert edgevlm.load(split_bundles["fp32"], threads=1).vision_attention == "onnxruntime"
    with pytest.raises(ConfigError, match="needs a bundle whose vision graph is cut"):
        edgevlm.load(split_bundles["fp32"], threads=1, vision_attention="bf16")
    with pytest.raises(ConfigError, match="vision attention must be one of"):
        edgevlm.load(split_bundles["int8"], threads=1, vision_attention="fast")


@pytest.mark.parametrize("kernel,why", [("attention_kernel", "this CPU lacks AVX-512 BF16"),
                                         ("mlp_kernel", "this CPU lacks AVX-512 VNNI")])
def test_unavailable_kernel_falls_back_or_says_why(split_bundles, monkeypatch, kernel, why):
    from edgevlm.runtime import attention_kernel, mlp_kernel

    monkeypatch.setattr({"attention_kernel": attention_kernel, "mlp_kernel": mlp_kernel}[kernel], "available",
                        lambda: (False, why))
    vlm = edgevlm.load(split_bundles["int4"], threads=1)
    assert vlm.vision_attention == "onnxruntime" and vlm.encode_tiles(_pixels(1)).shape == (1, 16, 64)
    with pytest.raises(ConfigError, match=f"not available here: {why}"):
        edgevlm.load(split_bundles["int4"], threads=1, vision_attention="bf16")


def test_a_bundle_listing_attention_only_the_old_way_still_loads(split_bundles, tmp_path):
    def old_style(s, m, p):
        s["attention"] = [{k: v for k, v in a.items() if k != "kind"} for a in s.pop("stages")]

    path = _mutated(split_bundles["int8"], tmp_path, old_style, entry="split")
    vlm = edgevlm.load(path, threads=1)
    assert vlm.encode_tiles(_pixels(1)).shape == (1, 16, 64)


def _swap_inputs(split, manifest, path):  # attention 1 reads the q of part 0's attention
    first, second = (s if s["kind"] == "attention" else s["attention"] for s in split["stages"])
    second["q"] = first["q"]


def _mlp(split):
    return next(s for s in split["stages"] if s["kind"] == "mlp")


def _attention(split):
    stage = split["stages"][0]
    return stage if stage["kind"] == "attention" else stage["attention"]


@needs_kernel
@pytest.mark.parametrize("change,message", [
    (lambda s, m, p: s["parts"].pop(), "malformed"),
    (lambda s, m, p: s.update(stages="x"), "malformed"),
    (lambda s, m, p: _attention(s).update(num_heads=0), "malformed"),
    (lambda s, m, p: _attention(s).update(num_heads=True), "malformed"),
    (lambda s, m, p: _attention(s).update(scale=float("nan")), "malformed"),
    (lambda s, m, p: _attention(s).pop("k"), "malformed"),
    (lambda s, m, p: s["stages"][0].update(kind="conv"), "malformed"),
    (lambda s, m, p: m["files"].pop(s["parts"][1]), "not a checksummed file"),
    (lambda s, m, p: s["parts"].__setitem__(0, "../vision_encoder.part00.onnx"), "not a checksummed file"),
    (_swap_inputs, "does not produce"),
])
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_malformed_split_entries_are_refused_in_one_line(split_bundles, tmp_path, change, message, quant):
    path = _mutated(split_bundles[quant], tmp_path, change, entry="split")
    with pytest.raises(BundleError, match=message) as info:
        edgevlm.load(path, threads=1)
    assert "\n" not in str(info.value)


@needs_kernel
@pytest.mark.parametrize("change,message", [
    (lambda s, m, p: _mlp(s)["fc1"].update(bias_offset=1 << 20), "lies outside"),
    (lambda s, m, p: _mlp(s)["fc2"].update(n=7), "lies outside|does not match"),
    (lambda s, m, p: _mlp(s)["fc1"].update(weight="nope"), "not in the 4-bit store"),
    (lambda s, m, p: _mlp(s)["fc2"].update(weight=_mlp(s)["fc1"]["weight"]), "does not match|do not chain|outputs"),
    (lambda s, m, p: _mlp(s)["fc1"].pop("n"), "malformed"),
    (lambda s, m, p: _mlp(s).update(residual=3), "malformed"),
    (lambda s, m, p: _mlp(s)["norm"].update(epsilon=-1.0), "malformed"),
    (lambda s, m, p: _mlp(s)["norm"].pop("beta_offset"), "malformed"),
    (lambda s, m, p: _mlp(s)["norm"].update(gamma_offset=1 << 30), "lies outside"),
    (lambda s, m, p: _mlp(s)["o_proj"].update(weight=_mlp(s)["fc1"]["weight"]), "does not match|do not chain"),
    (lambda s, m, p: s.pop("weights"), "malformed"),
    (lambda s, m, p: m["files"].pop(s["weights"]), "not a checksummed file"),
])
def test_malformed_mlp_stages_are_refused_in_one_line(split_bundles, tmp_path, change, message):
    path = _mutated(split_bundles["int4"], tmp_path, change, entry="split")
    with pytest.raises(BundleError, match=message) as info:
        edgevlm.load(path, threads=1)
    assert "\n" not in str(info.value)


@needs_kernel
def test_split_packed_bundle_leaves_no_temporary_files(split_bundles, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    vlm = edgevlm.load(split_bundles["int4"], threads=1)
    assert vlm.vision_attention == "bf16 kernel (edgevlm), int8 layer kernel"
    vlm.encode_tiles(_pixels(1))
    assert list(tmp_path.iterdir()) == []


def test_cli_vision_attention_errors_are_one_line(split_bundles):
    result = CliRunner().invoke(main, ["caption", "--model", str(split_bundles["fp32"]),
                                       "--vision-attention", "bf16", "x.png"])
    assert result.exit_code != 0
    assert "needs a bundle whose vision graph is cut" in result.output and "Traceback" not in result.output


@needs_kernel
def test_an_mlp_whose_o_proj_is_not_packed_is_cut_alone_and_checked(split_bundles, tmp_path):
    """Where the layer's o_proj does not qualify (here: left out of the packed names), the MLP stage
    starts from the norm's output (x) and the attention stays a stage of its own."""
    import shutil

    from edgevlm.export.vision_split import check_split, split_graph
    from edgevlm.runtime.packed_weights import unpacked_graph

    src = split_bundles["int4"]
    entry = _manifest(src)["graphs"]["vision_encoder"]
    packed, split = entry["packed_weights"], entry["split"]
    o_proj = {s["o_proj"]["weight"] for s in split["stages"]}
    shared = [f for f in ("vision_encoder.onnx.data",) if (src / f).exists()]
    with unpacked_graph(src, "vision_encoder.onnx", packed, also=shared) as graph:
        work = tmp_path / "w"
        shutil.copytree(graph.parent, work)
    shutil.copy(src / packed["file"], work / packed["file"])
    spec = split_graph(work / "vision_encoder.onnx", 128, {t["name"] for t in packed["tensors"]} - o_proj)
    assert [s["kind"] for s in spec["stages"]] == ["attention", "mlp"] * 2
    assert all("x" in s and "attention" not in s for s in spec["stages"][1::2])
    check = check_split(work / "vision_encoder.onnx", spec, 32, packed=packed)
    assert check["cut_rel_rms"] <= check["tolerance"] and check["mlp_stages"] == 2
    assert check["kernels_rel_rms"] < 0.05
