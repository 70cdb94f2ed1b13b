"""The Open Inference Protocol's datatype table is kept twice: in the client (torchship.sdk.client)
and in the handlers (torchship_oip), which TorchServe loads alone and so cannot import torchship.
These tests keep the two the same, both ways: what the client sends, the handler reads as the same
numpy type; what the handler answers, the client reads as the same numpy type."""

import json

import numpy as np
import pytest
import torchship_oip as oip

from torchship.sdk import client

# The one entry only the handlers have: BYTES is named so that a BYTES tensor is refused with its
# own message; the client never sends one and reads one as a plain object array.
HANDLER_ONLY = {"BYTES"}


def handler_table() -> dict[str, np.dtype]:
    return {name: np.dtype(t) for name, t in oip.DTYPES.items() if name not in HANDLER_ONLY}


def client_table() -> dict[str, np.dtype]:
    return {name: np.dtype(t) for name, t in client._V2_TO_NUMPY.items()}


def test_bytes_is_the_only_name_the_handlers_add():
    assert set(oip.DTYPES) - set(client._V2_TO_NUMPY) == HANDLER_ONLY
    assert oip.DTYPES["BYTES"] is object


def test_datatype_to_numpy_is_the_same_in_client_and_handlers():
    assert handler_table() == client_table()


def test_numpy_to_datatype_is_the_same_in_client_and_handlers():
    assert oip._NAMES == client._NUMPY_TO_V2


def test_each_table_is_one_to_one():
    for table in (handler_table(), client_table()):
        assert len(set(table.values())) == len(table)
    assert {np.dtype(name).name for name in client._NUMPY_TO_V2} == set(client._NUMPY_TO_V2)


@pytest.mark.parametrize("datatype", sorted(client._V2_TO_NUMPY))
def test_a_tensor_the_client_sends_is_read_by_the_handler_as_the_same_type(datatype):
    array = np.arange(6).reshape(2, 3).astype(client._V2_TO_NUMPY[datatype])
    tensor = client._v2_tensor("x", array)
    assert tensor["datatype"] == datatype
    request = json.loads(json.dumps({"inputs": [tensor]}))  # as it goes on the wire
    decoded = oip.decode_inputs(request)["x"]
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


@pytest.mark.parametrize("datatype", sorted(handler_table()))
def test_a_tensor_the_handler_answers_is_read_by_the_client_as_the_same_type(datatype):
    array = np.arange(6).reshape(2, 3).astype(oip.DTYPES[datatype])
    body, _ = oip.encode_response("m", "1", "r", [("y", array)], {}, binary=False)
    [out] = json.loads(body)["outputs"]
    assert out["datatype"] == datatype
    dtype = client._V2_TO_NUMPY[out["datatype"]]  # as TorchServe.infer_v2 reads each output
    decoded = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)
