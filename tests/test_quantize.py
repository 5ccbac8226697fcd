"""--quant int8 / int4 / mixed: quantized graphs, per-graph precision in the manifest, runtime still works."""

import json
from collections import Counter

import onnx
import pytest

import edgevlm
from edgevlm.errors import EdgeVLMError
from edgevlm.export.quantize import EMBED_TOLERANCE, TOLERANCE, precisions
from tests.test_golden import CHECKPOINT, GOLDEN, SAMPLES


@pytest.fixture(scope="module", params=["int8", "int4", "mixed"])
def quant_bundle(request, tmp_path_factory):
    """The trained default checkpoint, exported fused + quantized (a random model's flat logits make
    quantization error meaningless: 4-bit error on the std-0.3 test model compounds far beyond a
    trained model's)."""
    from edgevlm.export.to_onnx import export_bundle
    from edgevlm.models.registry import load_checkpoint

    ckpt = load_checkpoint(CHECKPOINT)
    out = tmp_path_factory.mktemp("quant") / request.param
    export_bundle(ckpt.model, ckpt.tokenizer, out, preprocess=ckpt.preprocess.to_dict(), prompt=ckpt.prompt.to_dict(),
                  special_tokens=ckpt.special_tokens, generation=ckpt.generation.to_dict(), progress=False,
                  attention="fused", quant=request.param)
    return out, request.param


def _ops(path):
    # without external data: a packed vision graph's int8 file exists only while the runtime loads it
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _nbits(path):
    """bits of every MatMulNBits node: {node name: bits}."""
    return {n.name: next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMulNBits"}


def test_quantized_graphs_use_quantized_ops_and_record_precision(quant_bundle):
    path, quant = quant_bundle
    manifest = json.loads((path / "edgevlm.json").read_text())
    for graph, prec in precisions(quant).items():
        assert manifest["graphs"][graph]["precision"] == prec
        if prec == "fp32":
            continue
        report = manifest["validation"][graph]["quantized_vs_fp32"]
        ops = _ops(path / f"{graph}.onnx")
        if graph == "embed_tokens":
            assert ops == {"GatherBlockQuantized": 1} and report["rel_rms"] <= EMBED_TOLERANCE["rel_rms"], report
            continue
        assert report["rel_rms"] <= TOLERANCE[prec]["rel_rms"]
        if graph == "vision_encoder" and prec == "int4":  # 4-bit weights shipped, run as int8
            packed = manifest["graphs"][graph]["packed_weights"]
            assert ops["MatMulInteger"] >= 4 and "MatMulNBits" not in ops, ops
            assert packed["file"] in manifest["files"] and (path / packed["file"]).is_file()
            assert not (path / packed["expands_to"]).exists() and packed["expands_to"] not in manifest["files"]
        elif prec in ("int4", "mixed"):
            assert ops["MatMulNBits"] >= 7 * 2 and report["token_agreement"] >= TOLERANCE[prec]["token_agreement"]
        else:
            assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] >= 4, ops
    assert not list(path.glob("*.fp32.onnx"))
    assert "Gemm" not in _ops(path / "decoder.onnx")  # lm_head quantized too
    assert "MatMul" not in _ops(path / "decoder.onnx")  # every linear quantized (attention is fused)


@pytest.mark.parametrize("quant_bundle", ["mixed"], indirect=True)
def test_mixed_keeps_the_most_sensitive_layers_at_8_bit_within_budget(quant_bundle):
    path, _ = quant_bundle
    record = json.loads((path / "edgevlm.json").read_text())["validation"]["decoder"]["mixed"]
    bits = _nbits(path / "decoder.onnx")
    eight = {name for name, b in bits.items() if b == 8}
    assert eight and len(eight) < len(bits) and set(bits.values()) == {4, 8}
    assert {r["node"] for r in record["int8_layers"]} == eight  # the recorded nodes are the 8-bit ones
    assert record["used"] <= record["budget"] == 0.25
    # the budget, recounted from the graph: K * N of the 8-bit nodes over all decoder MatMulNBits
    dims = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for n in onnx.load(str(path / "decoder.onnx")).graph.node if n.op_type == "MatMulNBits"}
    size = {name: d["K"] * d["N"] for name, d in dims.items()}
    assert sum(size[n] for n in eight) <= 0.25 * sum(size.values())
    # the reason is recorded: most int4-sensitive first, and 8 bit measured better for each
    sens = [r["int4_rel_rms"] for r in record["int8_layers"]]
    assert sens == sorted(sens, reverse=True) and sens[0] >= record["largest_int4_rel_rms_left_at_4bit"]
    assert all(r["int8_rel_rms"] < r["int4_rel_rms"] and "rank" in r["why"] for r in record["int8_layers"])


# measured on the shipped samples (golden = fp32 captions): exact captions and greedy tokens that
# agree position by position before the first difference
MIN_EXACT_CAPTIONS = {"int8": 0.8, "int4": 0.5, "mixed": 0.5}


def test_quantized_bundle_captions_the_samples_like_fp32(quant_bundle):
    path, quant = quant_bundle
    vlm = edgevlm.load(path, threads=2)
    exact = 0
    for sample in SAMPLES:
        got, want = vlm.run(sample).token_ids, GOLDEN[sample.name]["token_ids"]
        exact += got == want
    print(f"{quant}: {exact}/{len(SAMPLES)} sample captions identical to fp32")
    assert exact / len(SAMPLES) >= MIN_EXACT_CAPTIONS[quant]


def test_gemm_to_matmul_keeps_the_result(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgevlm.export.quantize import gemm_to_matmul

    w = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)  # [N, K]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 7])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert gemm_to_matmul(model) == 1 and [i.name for i in model.graph.initializer] == ["w.matmul"]
    x = np.ones((3, 5), dtype=np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-6)


def test_unknown_quant_is_refused():
    with pytest.raises(EdgeVLMError, match="mixed"):
        precisions("int3")
