"""Quantized embeddings (GatherBlockQuantized, 4 bit, block 32) against the fp32 table.

Stated tolerance: every element within one quantization step of its block (|block max| / 8:
the symmetric format's worst case, reached only where a value of the sign opposite to the block's
extreme is clipped at +7; elsewhere the error is at most half a step), relative RMS error of the
rows within EMBED_TOLERANCE (0.15; ~0.08 for Gaussian rows), and ONNX Runtime's rows equal to
the format's reference dequantization to 1e-6."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlm.errors import EdgeVLMError
from edgevlm.export.quant_embed import dequantize_blocks, quantize_blocks, quantize_embeddings
from edgevlm.export.quantize import EMBED_TOLERANCE, compare, quantize_graph, within


def embed_graph(table: np.ndarray) -> onnx.ModelProto:
    """embed_tokens.onnx as exported: Gather(weight [V, D], input_ids [B, S]) -> [B, S, D]."""
    graph = helper.make_graph([helper.make_node("Gather", ["weight", "input_ids"], ["inputs_embeds"], name="node_embedding")],
                              "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", table.shape[1]])],
                              [numpy_helper.from_array(table, "weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def rows(model, ids):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids})[0]


@pytest.mark.parametrize("shape", [(300, 192), (64, 48)])  # a whole number of blocks; a partial last block
def test_quantized_rows_match_fp32_within_the_stated_tolerance(shape):
    table = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.05
    table[3, :32] = 0  # an all-zero block
    model = embed_graph(table)
    assert quantize_embeddings(model) == 1
    assert [n.op_type for n in model.graph.node] == ["GatherBlockQuantized"]
    assert "weight" not in {t.name for t in model.graph.initializer}  # the fp32 table is gone
    onnx.checker.check_model(model)
    ids = np.arange(shape[0])[None].repeat(2, 0)  # [2, V]: every row, batch 2
    got = rows(model, ids)[0]  # [V, D]
    np.testing.assert_allclose(got, dequantize_blocks(*quantize_blocks(table)), rtol=0, atol=1e-6)
    blocks = -(-shape[1] // 32)
    block_max = np.abs(np.pad(table, ((0, 0), (0, blocks * 32 - shape[1])))).reshape(shape[0], blocks, 32).max(-1)
    step = np.repeat(block_max, 32, axis=1)[:, :shape[1]] / 8  # [V, D]
    assert (np.abs(got - table) <= step + 1e-6).all()
    assert (got[3, :32] == 0).all()
    rel_rms = np.sqrt(((got - table) ** 2).mean() / (table ** 2).mean())
    assert rel_rms <= EMBED_TOLERANCE["rel_rms"], rel_rms


def test_bundle_path_quantizes_and_checks_embed_tokens(tmp_path):
    table = np.random.default_rng(1).standard_normal((500, 64)).astype(np.float32)
    onnx.save(embed_graph(table), tmp_path / "embed_tokens.fp32.onnx")
    quantize_graph(tmp_path / "embed_tokens.fp32.onnx", tmp_path / "embed_tokens.onnx", "int4")  # graph from the name
    report = compare(tmp_path / "embed_tokens.fp32.onnx", tmp_path / "embed_tokens.onnx", "embed_tokens")
    assert within(report, "int4", "embed_tokens") and report["rel_rms"] < 0.1, report
    size = lambda name: (tmp_path / name).stat().st_size  # noqa: E731
    assert size("embed_tokens.onnx") < size("embed_tokens.fp32.onnx") / 5  # 4 bit + a scale per 32
    with pytest.raises(EdgeVLMError, match="int4"):
        quantize_graph(tmp_path / "embed_tokens.fp32.onnx", tmp_path / "e8.onnx", "int8", graph="embed_tokens")


def test_a_constant_gather_elsewhere_is_left_alone_by_the_decoder_path(tmp_path):
    """A Gather of a constant table in a decoder-like graph (a rotary cache) keeps full precision."""
    table = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    onnx.save(embed_graph(table), tmp_path / "fused.onnx")
    quantize_graph(tmp_path / "fused.onnx", tmp_path / "q.onnx", "int4")
    assert [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node] == ["Gather"]
