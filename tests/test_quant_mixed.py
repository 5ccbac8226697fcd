"""--quant mixed: the 8-bit choice respects its budget, maps onto the right MatMul nodes, and the
quantized graph holds both 4- and 8-bit MatMulNBits. (The full export of the trained checkpoint
with --quant mixed is checked in test_quantize.py.)"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevlm.errors import EdgeVLMError
from edgevlm.export.quant_mixed import BUDGET, choose_8bit, matmul_nodes, quantize_mixed


def test_choice_takes_the_most_sensitive_layers_within_the_budget():
    sens = {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.1}
    elems = {"a": 10, "b": 60, "c": 15, "d": 15}  # 100 in all
    assert choose_8bit(sens, elems, 0.25) == ["a", "c"]  # b does not fit; c, less sensitive, does
    assert choose_8bit(sens, elems, 0.0) == []
    assert choose_8bit(sens, elems, 1.0) == ["a", "b", "c", "d"]
    for budget in (0.1, 0.25, 0.5, 0.8):
        assert sum(elems[n] for n in choose_8bit(sens, elems, budget)) <= budget * 100
    with pytest.raises(EdgeVLMError, match="budget"):
        choose_8bit(sens, elems, 1.5)


def three_linears():
    """x -> q (64x64) -> up (128x64) -> down (64x128): MatMuls as the exporter writes them,
    with node names that say nothing about the layer (as the exporter's do)."""
    rng = np.random.default_rng(0)
    w = {"q": rng.standard_normal((64, 64)), "up": rng.standard_normal((128, 64)), "down": rng.standard_normal((64, 128))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["h1"], name="node_linear"),
             helper.make_node("MatMul", ["h1", "wu"], ["h2"], name="node_linear_1"),
             helper.make_node("MatMul", ["h2", "wd"], ["y"], name="node_linear_2")]
    inits = [numpy_helper.from_array(np.ascontiguousarray(w[k].T), n) for k, n in (("q", "wq"), ("up", "wu"), ("down", "wd"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w


def test_layers_map_onto_their_matmul_nodes_by_weight():
    model, w = three_linears()
    assert matmul_nodes(model, w) == {"q": "node_linear", "up": "node_linear_1", "down": "node_linear_2"}
    with pytest.raises(EdgeVLMError, match="other"):
        matmul_nodes(model, {"other": np.ones((64, 64), np.float32)})


def test_mixed_graph_has_4_and_8_bit_nodes_and_runs():
    model, w = three_linears()
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    want = x @ w["q"].T @ w["up"].T @ w["down"].T
    nodes = matmul_nodes(model, {"up": w["up"]})
    mixed, renamed = quantize_mixed(model, set(nodes.values()))
    bits = {n.name: next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")
            for n in mixed.graph.node if n.op_type == "MatMulNBits"}
    assert sorted(bits.values()) == [4, 4, 8] and bits[renamed["node_linear_1"]] == 8
    assert not [n for n in mixed.graph.node if n.op_type == "MatMul"]
    (got,) = ort.InferenceSession(mixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()) < 0.2
    with pytest.raises(EdgeVLMError, match="nope"):
        quantize_mixed(three_linears()[0], {"nope"})


def test_default_budget_is_stated():
    assert BUDGET == 0.25
