"""Sibling linears merged into one matmul (kernels/onnx_merge_matmuls.py) and SiLU fused into
QuickGelu (kernels/onnx_silu.py): same outputs as the graphs they came from, fewer kernels."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlm.export.graphs import export_decoder
from edgevlm.export.quant_mixed import quantize_mixed, quantize_nbits
from edgevlm.kernels.onnx_merge_matmuls import merge_sibling_matmuls
from edgevlm.kernels.onnx_silu import fuse_silu
from tests.test_kernels import _setup


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _siblings(n_out=(48, 16, 16)):
    """x [2, 3, 64] -> three MatMuls of the same x (graph outputs, so they need a Split)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, n)).astype(np.float32), f"w{i}")
             for i, n in enumerate(n_out)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(len(n_out))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, 3, n])
                               for i, n in enumerate(n_out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _outputs(model, feeds):
    return _session(model).run(None, feeds)


@pytest.mark.parametrize("quant", ["fp32", "int4", "int8", "mixed"])
def test_sibling_matmuls_merge_and_compute_the_same(quant):
    model = _siblings()
    if quant in ("int4", "int8"):
        model = quantize_nbits(model, int(quant[3]))
    elif quant == "mixed":
        model, _ = quantize_mixed(model, {"mm1"})  # mm1 at 8 bit, mm0 and mm2 at 4
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)}
    want = _outputs(model, x)
    merged = onnx.ModelProto.FromString(model.SerializeToString())
    renamed = merge_sibling_matmuls(merged)
    onnx.checker.check_model(merged)
    ops = Counter(n.op_type for n in merged.graph.node)
    op = "MatMul" if quant == "fp32" else "MatMulNBits"
    # mixed: the 8-bit linear cannot share a kernel with 4-bit ones, so it stays alone
    assert ops[op] == (2 if quant == "mixed" else 1) and ops["Split"] == 1, ops
    assert len(renamed) == (2 if quant == "mixed" else 3)
    got = _outputs(merged, x)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    # unused weights dropped: B (+ scales) per matmul, and the split sizes
    assert len(merged.graph.initializer) == ops[op] * (1 if quant == "fp32" else 2) + ops["Split"]


def test_lone_or_unsupported_matmuls_are_left_alone():
    model = _siblings(n_out=(16,))
    assert merge_sibling_matmuls(model) == {} and [n.op_type for n in model.graph.node] == ["MatMul"]


@pytest.mark.parametrize("quant", ["fp32", "int4", "mixed"])
def test_fused_decoder_packs_qkv_into_group_query_attention(tmp_path, quant):
    model, *_ = _setup()
    path = tmp_path / "decoder.onnx"
    export_decoder(model, path, "fused")
    proto = onnx.load(str(path))
    if quant == "int4":
        proto = quantize_nbits(proto, 4)
    elif quant == "mixed":
        first_q = next(n.name for n in proto.graph.node if n.op_type == "MatMul")
        proto, _ = quantize_mixed(proto, {first_q})
    merged = onnx.ModelProto.FromString(proto.SerializeToString())
    merge_sibling_matmuls(merged)
    layers = model.cfg.text.num_layers
    gqa = [n for n in merged.graph.node if n.op_type == "GroupQueryAttention"]
    packed = [n for n in gqa if list(n.input[1:3]) == ["", ""]]
    # every layer's q/k/v is one packed input, except (mixed) the layer whose q stayed 8 bit
    assert len(gqa) == layers and len(packed) == layers - (1 if quant == "mixed" else 0)
    ops = Counter(n.op_type for n in merged.graph.node)
    assert ops["Split"] == layers + (1 if quant == "mixed" else 0)  # gate/up everywhere (+ that layer's k/v)
    # prefill of 5 tokens into a 12-slot buffer, then one decode step: outputs equal
    rng = np.random.default_rng(0)
    d, kvh, hd = model.cfg.text.hidden_size, model.cfg.text.num_kv_heads, model.cfg.text.head_dim
    past = {f"past.{i}.{kv}": rng.standard_normal((1, kvh, 12, hd)).astype(np.float32) * 0
            for i in range(layers) for kv in "kv"}
    for s, start in ((5, 0), (1, 5)):
        feeds = {"inputs_embeds": rng.standard_normal((1, s, d)).astype(np.float32),
                 "position_ids": (start + np.arange(s))[None].astype(np.int64), **past}
        want, got = _outputs(proto, feeds), _outputs(merged, feeds)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
        past = {k: v for k, v in zip(past, want[1:])}


def test_silu_becomes_quick_gelu_with_alpha_one():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"]),
             helper.make_node("Sigmoid", ["x"], ["s2"]), helper.make_node("Mul", ["x", "s2"], ["y2"]),
             helper.make_node("Add", ["s2", "x"], ["z"])]  # s2 is read twice: that Sigmoid must stay
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                               for n in ("y", "y2", "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"x": np.linspace(-6, 6, 32, dtype=np.float32).reshape(4, 8)}
    want = _outputs(model, feeds)
    assert fuse_silu(model) == 1
    assert Counter(n.op_type for n in model.graph.node) == {"QuickGelu": 1, "Sigmoid": 1, "Mul": 1, "Add": 1}
    for w, g in zip(want, _outputs(model, feeds)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
