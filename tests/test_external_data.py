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

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices.ort import OrtRunner, validate_onnx_bytes
from devices.profile import DeviceProfile
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
