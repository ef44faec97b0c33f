"""A model cannot make a runtime read a file it names (ONNX external data), locally, on an agent or in OpenVINO.

An ONNX tensor may keep its bytes in another file, named by the model.
Loaded as bytes, onnxruntime looked for that file in the working directory,
and OpenVINO in the folder its model was spilled to (the temp folder), so a
model sent to the agent could load any file there as a weight.  Each test
puts a secret beside the process and offers a model that names it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices.onnx_scan import MAX_FIELDS, MalformedModel, file_references
from devices.ort import ModelInputError, OrtRunner, validate_onnx_bytes
from devices.profile import DeviceProfile
from devices.reference import reference_model_bytes
from tests.test_agent_hardening import AUTH, MEASURING, RunningAgent

SECRET = b"agent-token-0123"
VALUES = len(SECRET) // 4  # float32


def model_reading(location: str | None) -> bytes:
    """``y = x + w`` over four floats, ``w``'s 16 bytes stored in the file ``location`` names (inline when None)."""
    if location is None:
        weight = numpy_helper.from_array(np.zeros(VALUES, np.float32), "w")
    else:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[VALUES],
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(SECRET)))):
            weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "reads-a-file",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [VALUES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [VALUES])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def profile(runtime: str = "onnxruntime") -> DeviceProfile:
    return DeviceProfile.from_dict({"name": "external-data", "runtime": runtime, "intra_op_threads": 1})


@pytest.fixture
def beside_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory and the temp folder hold ``secret.txt``."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("location", ["secret.txt", "./secret.txt", "sub/../secret.txt"])
def test_onnxruntime_loads_no_file_a_model_names(beside_a_secret: Path, location: str) -> None:
    validate_onnx_bytes(model_reading(None))  # the same model, its weight inline, is fine
    assert OrtRunner(model_reading(None), profile()).session.run(None, {"x": np.zeros(VALUES, np.float32)})
    with pytest.raises(ValueError, match="weights must be inside the file"):
        validate_onnx_bytes(model_reading(location))
    with pytest.raises(Exception, match="(?i)external data"):
        OrtRunner(model_reading(location), profile())


def test_openvino_loads_no_file_beside_its_spilled_model(beside_a_secret: Path) -> None:
    from devices.ov import OpenVinoRunner

    assert OpenVinoRunner(model_reading(None), profile("openvino")).run_ms() > 0
    with pytest.raises(ValueError, match="weights must be inside the file"):
        OpenVinoRunner(model_reading("secret.txt"), profile("openvino"))


def test_an_agent_refuses_a_model_naming_a_file_beside_it(beside_a_secret: Path) -> None:
    agent = RunningAgent(beside_a_secret / "state", MEASURING)  # started in the secret's folder
    try:
        model = model_reading("secret.txt")
        sha = hashlib.sha256(model).hexdigest()
        answer = httpx.put(f"{agent.url}/models/{sha}", content=model, headers=AUTH, timeout=30)
        assert answer.status_code == 400, answer.text
        assert "weights must be inside the file" in answer.json()["detail"]
        assert not list((beside_a_secret / "state").rglob(f"{sha}*")), "nothing of it was stored"
        inline = model_reading(None)
        answer = httpx.put(f"{agent.url}/models/{hashlib.sha256(inline).hexdigest()}", content=inline,
                           headers=AUTH, timeout=30)
        assert answer.status_code in (200, 201), answer.text
    finally:
        agent.stop()


def external(name: str, location: str = "secret.txt") -> TensorProto:
    """A 4-float tensor whose bytes ``location`` holds."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[VALUES], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(SECRET)))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def add_graph(name: str, initializers: list[TensorProto] = (), nodes: list = ()) -> onnx.GraphProto:
    return helper.make_graph([*nodes, helper.make_node("Add", ["x", "x"], ["y"])], name,
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [VALUES])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [VALUES])], list(initializers))


def hiding_places() -> dict[str, onnx.ModelProto]:
    """Every kind of place in ``onnx.proto`` where a tensor can sit, each holding one external tensor."""
    sparse = onnx.SparseTensorProto(values=external("in-sparse"), dims=[VALUES])
    sparse.indices.CopyFrom(numpy_helper.from_array(np.arange(VALUES, dtype=np.int64), "indices"))
    subgraph = add_graph("branch", [external("in-subgraph")])
    places = {
        "initializer": add_graph("g", [external("in-initializer")]),
        "attribute t": add_graph("g", nodes=[helper.make_node("Constant", [], ["c"], value=external("in-t"))]),
        "attribute tensors": add_graph("g", nodes=[helper.make_node(
            "Custom", [], ["c"], domain="x", tensors=[numpy_helper.from_array(np.zeros(1, np.float32), "ok"),
                                                     external("in-tensors")])]),
        "subgraph of If": add_graph("g", nodes=[helper.make_node(
            "If", ["cond"], ["c"], then_branch=subgraph, else_branch=add_graph("other"))]),
        "sparse initializer": add_graph("g"),
        "attribute sparse_tensor": add_graph("g", nodes=[helper.make_node("Constant", [], ["c"],
                                                                          sparse_value=sparse)]),
    }
    places["sparse initializer"].sparse_initializer.append(sparse)
    models = {place: helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
              for place, graph in places.items()}
    in_function = helper.make_model(add_graph("g"), opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("f", 1)])
    in_function.functions.append(helper.make_function(
        "f", "F", ["a"], ["b"], [helper.make_node("Constant", [], ["b"], value=external("in-function"))],
        [helper.make_opsetid("", 17)]))
    models["function body"] = in_function
    in_training = helper.make_model(add_graph("g"), opset_imports=[helper.make_opsetid("", 17)])
    in_training.training_info.add().algorithm.CopyFrom(add_graph("train", [external("in-training")]))
    models["training graph"] = in_training
    return models


@pytest.mark.parametrize("place", list(hiding_places()))
def test_the_scan_finds_an_external_tensor_wherever_onnx_lets_it_sit(place: str) -> None:
    """Read from the model's own bytes, so no runtime version (old onnxruntime ignores the folder setting) matters."""
    model = hiding_places()[place].SerializeToString()
    [found] = file_references(model)
    assert found.startswith("tensor 'in-"), found
    with pytest.raises(ValueError, match="weights must be inside the file"):
        validate_onnx_bytes(model)


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def key(field: int, wire_type: int) -> bytes:
    """A protobuf field key."""
    return varint((field << 3) | wire_type)


def test_a_node_that_can_name_a_file_for_its_provider_is_refused() -> None:
    """``EPContext`` (a model precompiled for one provider) can name a binary to read (``embed_mode: 0``)."""
    node = helper.make_node("EPContext", ["x"], ["y"], name="compiled", domain="com.microsoft", embed_mode=0,
                            ep_cache_context="secret.txt", source="QNN")
    model = helper.make_model(add_graph("g", nodes=[node]), opset_imports=[helper.make_opsetid("", 17)])
    assert file_references(model.SerializeToString()) == ["EPContext node 'compiled'"]
    with pytest.raises(ValueError, match="weights must be inside the file"):
        validate_onnx_bytes(model.SerializeToString())


def test_the_scan_passes_real_models_and_skips_what_protobuf_parsers_skip() -> None:
    """Exported-style models pass; a group field (which parsers skip) cannot hide an external tensor."""
    import onnxruntime as ort

    assert file_references(reference_model_bytes()) == []
    assert file_references(model_reading(None)) == []
    group = key(99, 3) + key(1, 0) + bytes([7]) + key(99, 4)  # field 99: a group holding one varint
    ort.InferenceSession(group + model_reading(None), providers=["CPUExecutionProvider"])  # still loads
    assert file_references(group + model_reading("secret.txt")) == ["tensor 'w'"]


def test_a_model_of_more_fields_than_the_bound_is_refused_not_scanned_for_long() -> None:
    """One integer per field (legal protobuf, never what an exporter writes) took the scan 22 s for 64 MiB."""
    tensor = (key(7, 0) + bytes([0])) * (MAX_FIELDS + 1)  # int64_data, one element per field
    graph = key(5, 2) + varint(len(tensor)) + tensor
    model = key(7, 2) + varint(len(graph)) + graph
    with pytest.raises(MalformedModel, match="more than 1,000,000 protobuf fields"):
        file_references(model)
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        validate_onnx_bytes(model)


def test_damaged_models_are_refused_in_one_line_never_crash_the_scan() -> None:
    """Random byte flips, cuts and insertions into a real model: an answer or MalformedModel, nothing else."""
    original = reference_model_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"clean": 0, "malformed": 0}
    for _ in range(1500):
        damaged = bytearray(original)
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, len(damaged)))
            action = rng.integers(0, 3)
            if action == 0:
                damaged[at] = int(rng.integers(0, 256))
            elif action == 1:
                del damaged[at:at + int(rng.integers(1, 64))]
            else:
                damaged[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        try:
            file_references(bytes(damaged))
            outcomes["clean"] += 1
        except MalformedModel:
            outcomes["malformed"] += 1
    assert outcomes["clean"] > 0 and outcomes["malformed"] > 0, outcomes
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        validate_onnx_bytes(original[:len(original) // 2])


def test_sparse_tensors_in_attributes_are_sized_too() -> None:
    """A ``Constant`` node's ``sparse_value`` is made dense when it runs, like a sparse initializer at load."""
    from devices.onnx_scan import scan_model

    values = numpy_helper.from_array(np.array([1.0], np.float16), "v")
    indices = numpy_helper.from_array(np.array([0], np.int64), "i")
    constant = helper.make_node("Constant", [], ["c"],
                                sparse_value=helper.make_sparse_tensor(values, indices, [1 << 20, 1 << 10]))
    graph = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT16, None)])
    scan = scan_model(helper.make_model(graph).SerializeToString())
    assert scan.sparse_dense_bytes == 2 * (1 << 30) and scan.file_references == []
    assert scan_model(reference_model_bytes()).sparse_dense_bytes == 0


@pytest.mark.parametrize(("dims", "said"), [([1, 0], "has 0 elements at axis 1: an empty input cannot be timed"),
                                            ([1, "width"], "has a symbolic dimension 'width' at axis 1")])
def test_an_input_that_cannot_be_built_is_named_for_what_it_is(dims: list[Any], said: str) -> None:
    """A zero-sized axis was reported as a "symbolic dimension 0"."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(ModelInputError, match=said):
        OrtRunner(model, DeviceProfile(name="cpu"))
