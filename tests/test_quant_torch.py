"""PyTorch-side fake quantization is the exported graph's weight format, bit for bit; the
per-layer report covers every linear with finite errors."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgevlm.export.quant_mixed import quantize_nbits
from edgevlm.export.quant_torch import fake_quant


def matmul_graph(weight: np.ndarray) -> onnx.ModelProto:
    """y = x @ W^T as the exporter writes an nn.Linear: MatMul(x, B) with B = W^T [K, N]."""
    n, k = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def matmulnbits_weight(model: onnx.ModelProto) -> np.ndarray:
    """Dequantize the MatMulNBits node's B: [N, blocks, blob] uint8 (4 bit: low nibble first),
    scales [N, blocks], implicit zero point 2^(bits-1). Returns W' [N, K]."""
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    packed = inits[node.input[1]].reshape(n, -1)  # [N, blocks * blob]
    q = np.stack([packed & 15, packed >> 4], -1).reshape(n, -1) if bits == 4 else packed  # [N, blocks * block]
    scales = np.repeat(inits[node.input[2]].reshape(n, -1), block, axis=1)  # [N, blocks * block]
    return ((q.astype(np.float32) - (1 << (bits - 1))) * scales)[:, :k]


def weights(seed):
    """Random [N, K] weights of several scales, K a multiple of 32 or not, some blocks with a
    +/- tie for the largest magnitude and an all-zero row."""
    rng = np.random.default_rng(seed)
    for n, k in ((7, 64), (33, 96), (5, 50), (16, 192)):
        w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3)).astype(np.float32)
        w[0, :2] = [1.5, -1.5]
        w[1] = 0
        yield w


@pytest.mark.parametrize("bits", [4, 8])
def test_block_fake_quant_equals_the_matmulnbits_weight(bits):
    fmt = "int4" if bits == 4 else "int8_block"
    for w in weights(bits):
        quantized = quantize_nbits(matmul_graph(w), bits)  # what export/quantize.py runs
        got = fake_quant(torch.from_numpy(w), fmt).numpy()
        np.testing.assert_allclose(got, matmulnbits_weight(quantized), rtol=0, atol=1e-6)
        # and ONNX Runtime itself: with the fp32 compute path (no accuracy_level), an identity
        # input returns the dequantized weight, transposed
        del quantized.graph.node[0].attribute[[a.name for a in quantized.graph.node[0].attribute].index("accuracy_level")]
        sess = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
        (out,) = sess.run(None, {"x": np.eye(w.shape[1], dtype=np.float32)})  # [K, N]
        np.testing.assert_allclose(out.T, got, rtol=0, atol=1e-6)
        assert np.abs(got - w).max() > 0  # it did quantize


def test_channel_int8_fake_quant_equals_the_dynamic_int8_weight(tmp_path):
    from edgevlm.export.quantize import quantize_graph

    for i, w in enumerate(weights(0)):
        onnx.save(matmul_graph(w), tmp_path / "g.onnx")
        quantize_graph(tmp_path / "g.onnx", tmp_path / f"q{i}.onnx", "int8")
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / f"q{i}.onnx").graph.initializer}
        q = inits["w_quantized"]  # [K, N] int8, zero point 0
        assert not inits["w_zero_point"].any()
        exported = (q.astype(np.float32) * inits["w_scale"][None, :]).T  # [N, K]
        np.testing.assert_allclose(fake_quant(torch.from_numpy(w), "int8").numpy(), exported, rtol=0, atol=1e-6)


def test_numpy_block_quantizer_matches_torch():
    from edgevlm.export.quant_embed import dequantize_blocks, quantize_blocks

    for w in weights(3):
        q, scales = quantize_blocks(w, 4)
        np.testing.assert_array_equal(dequantize_blocks(q, scales, 4), fake_quant(torch.from_numpy(w), "int4").numpy())


@pytest.fixture(scope="module")
def tiny_setup():
    from tests.conftest import tiny_scene_setup

    return tiny_scene_setup()


@pytest.mark.parametrize("quant", ["int8", "int4", "mixed"])
def test_layer_report_has_every_linear_with_finite_errors(tiny_setup, quant, tmp_path):
    from edgevlm.export.quant_report import PLAN, calibration_batches, format_table, quant_report, write_json
    from edgevlm.export.quant_torch import linears

    model, tokenizer, pre, prompt, gen, special = tiny_setup
    batches = calibration_batches(tokenizer, prompt, pre, gen.eos_token_ids[0], 3)
    assert len(batches) == 3 and all(ids.shape[0] == 1 for _, ids in batches)
    report = quant_report(model, batches, quant)
    rows = {r["layer"]: r for r in report["layers"]}
    assert set(rows) == set(linears(model)) and len(rows) == len(report["layers"])
    for name, row in rows.items():
        assert math.isfinite(row["max_abs"]) and math.isfinite(row["rel_rms"]) and row["rel_rms"] > 0, row
        if quant != "mixed" or row["graph"] == "vision_encoder":
            assert row["format"] == PLAN[quant][row["graph"]]
    if quant == "mixed":
        kept = {r["layer"] for r in report["mixed"]["int8_layers"]}
        assert kept and {n for n, r in rows.items() if r["format"] == "int8_block"} == kept
        assert report["mixed"]["used"] <= report["mixed"]["budget"]
        # 8 bit is the better format wherever it is used
        assert all(rows[n]["rel_rms"] < rows[n]["int4_rel_rms"] for n in kept)
    table = format_table(report)
    assert all(name in table for name in rows)
    write_json(report, tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().startswith("{")
