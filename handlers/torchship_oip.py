"""The Open Inference Protocol (KServe v2) for torchship's handlers, without a server-wide envelope.

TorchServe routes `POST /v2/models/{name}/infer` to the model's handler with the body as sent.
Its own `service_envelope=kservev2` is server-wide and reads only the first request of a batch,
so torchship's handlers speak the protocol themselves: JSON tensors, and the binary tensor
extension that standard clients (e.g. tritonclient) use by default.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}
_NAMES = {np.dtype(v).name: k for k, v in DTYPES.items() if v is not object}
HEADER = "inference-header-content-length"
MAX_INPUTS = 16  # tensors per request
MAX_OUTPUTS = 16  # outputs a request may name
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 24  # values per input tensor, checked from the declared shape before anything is allocated
MAX_ID = 256  # characters of a request id (it is echoed back)


class ProtocolError(ValueError):
    """The request does not follow the protocol; answered with 400."""


def is_v2(payload: Any) -> bool:
    """A v2 request: an object with `inputs` (checked further by decode_inputs)."""
    return isinstance(payload, dict) and "inputs" in payload


def has_binary_header(headers: dict[str, Any]) -> bool:
    return any(str(key).lower() == HEADER for key in (headers or {}))


def header_length(headers: dict[str, Any]) -> int | None:
    """The JSON part's length when the binary extension is used, from the request headers."""
    for key, value in (headers or {}).items():
        if str(key).lower() == HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ProtocolError(f"Inference-Header-Content-Length is not a number: {value!r}") from None
    return None


def split_body(body: bytes, json_length: int) -> tuple[dict, bytes]:
    if json_length < 0 or json_length > len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {json_length} is outside the body ({len(body)} bytes)")
    try:
        head = json.loads(body[:json_length].decode("utf-8"))
    except RecursionError:
        raise ProtocolError("the JSON part of the request is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the JSON part of the request is invalid: {str(exc)[:200]}") from None
    if not isinstance(head, dict):
        raise ProtocolError("the JSON part of the request must be an object with 'inputs'")
    return head, body[json_length:]


def check_request(request: dict) -> None:
    """The request's fields other than the input tensors: types and sizes (the id is echoed back)."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_INPUTS:
        raise ProtocolError(f"'inputs' must be a list of 1 to {MAX_INPUTS} tensors")
    rid = request.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID):
        raise ProtocolError(f"'id' must be a string of at most {MAX_ID} characters")
    if not isinstance(request.get("parameters") or {}, dict):
        raise ProtocolError("'parameters' must be an object")
    outputs = request.get("outputs") or []
    if (
        not isinstance(outputs, list)
        or len(outputs) > MAX_OUTPUTS
        or not all(
            isinstance(o, dict)
            and isinstance(o.get("name"), str)
            and len(o["name"]) <= MAX_ID
            and isinstance(o.get("parameters") or {}, dict)
            for o in outputs
        )
    ):
        raise ProtocolError(f"'outputs' must be a list of at most {MAX_OUTPUTS} objects with a name")


def decode_inputs(request: dict, binary: bytes = b"") -> dict[str, np.ndarray]:
    """Every input tensor of a request, by name, shaped and typed as declared."""
    check_request(request)
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request["inputs"]:
        if not isinstance(spec, dict):
            raise ProtocolError("each input must be an object with name, shape, datatype and data")
        name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or not isinstance(datatype, str)
            or datatype not in DTYPES
        ):
            label = repr(name)[:64] if isinstance(name, str) else "without a name"
            raise ProtocolError(f"input {label}: needs a name, a shape list and a datatype among {sorted(DTYPES)}")
        if len(name) > MAX_ID or name in tensors:
            raise ProtocolError(f"input names must be unique strings of at most {MAX_ID} characters")
        if len(shape) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS for d in shape
        ):
            raise ProtocolError(
                f"input {name!r}: shape must be at most {MAX_DIMS} non-negative integers of at most {MAX_ELEMENTS:,}"
            )
        count = math.prod(shape)  # Python integers: no overflow, whatever the shape claims
        if count > MAX_ELEMENTS:
            raise ProtocolError(f"input {name!r}: shape {shape} declares {count:,} values; at most {MAX_ELEMENTS:,}")
        if datatype == "BYTES":
            raise ProtocolError(f"input {name!r}: BYTES tensors are not supported by this model")
        dtype = np.dtype(DTYPES[datatype])
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if (
                isinstance(size, bool)
                or not isinstance(size, int)
                or size != count * dtype.itemsize
                or offset + size > len(binary)
            ):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {str(size)[:40]} does not match shape {shape} of {datatype}"
                )
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
            offset += size
        else:
            data = spec.get("data")
            if not isinstance(data, list):
                raise ProtocolError(f"input {name!r}: 'data' must be a list of {datatype} values")
            try:
                array = np.asarray(data, dtype=dtype).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError(f"input {name!r}: data are not {datatype} values") from None
            if array.size != count:
                raise ProtocolError(f"input {name!r}: {array.size} values do not fill shape {shape}")
        tensors[name] = array.reshape(shape)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset:,} bytes of binary data belong to no input")
    return tensors


def wants_binary(request: dict) -> bool:
    """Whether the client asked for outputs in the binary extension."""
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    return any(
        (o.get("parameters") or {}).get("binary_data") for o in request.get("outputs") or [] if isinstance(o, dict)
    )


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: list[tuple[str, np.ndarray]],
    request: dict,
    binary: bool,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when outputs travel as binary."""
    asked = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    if asked:
        unknown = sorted(set(asked) - {n for n, _ in outputs})
        if unknown:
            raise ProtocolError(f"unknown output(s) {unknown}; this model has {[n for n, _ in outputs]}")
        outputs = [(n, a) for n, a in outputs if n in asked]
    tensors, blobs = [], []
    for name, array in outputs:
        array = np.ascontiguousarray(array)
        entry = {"name": name, "shape": list(array.shape), "datatype": _NAMES[array.dtype.name]}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    head = json.dumps(
        {"model_name": model_name, "model_version": model_version, "id": request_id, "outputs": tensors},
        separators=(",", ":"),
    ).encode("utf-8")
    if not binary:
        return head, None
    return head + b"".join(blobs), len(head)
