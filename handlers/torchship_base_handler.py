"""The base of torchship's handlers: one forward per batch, and a bad item never fails the rest.

TorchServe fails a whole batch when a handler raises. Here every item is parsed on its own; an
item that cannot be parsed gets its own 4xx answer (`{"code", "type", "message"}`, the shape of
TorchServe's own errors) through `context.set_response_status`, and the good items of the same
batch go through the model together. Weights come from safetensors only (never pickle), and each
worker uses one torch thread unless the archive's model-config says otherwise.

A subclass implements `parse` (one request's payload -> model input, or ItemError) and `predict`
(list of inputs -> list of JSON-able outputs, one forward for the whole list).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import torchship_models
import torchship_oip as oip


class ItemError(Exception):
    """One item of a batch is invalid: answered with `code` and `message`, the rest go on."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def to_dict(self, v2: bool = False) -> dict[str, Any]:
        body = {"code": self.code, "type": HTTPStatus(self.code).phrase.replace(" ", ""), "message": self.message}
        if v2:
            body["error"] = self.message  # the Open Inference Protocol's error field
        return body


class BatchHandler:
    """Batching-aware handler with per-item errors. See the module docstring."""

    def __init__(self) -> None:
        self.initialized = False
        self.model: torch.nn.Module | None = None
        self.meta: dict[str, Any] = {}
        self.model_dir: Path | None = None

    # -------------------------------------------------------------- start-up

    def initialize(self, context: Any) -> None:
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        torch.set_num_threads(int(config.get("threads", 1)))
        self.model_dir = Path(context.system_properties["model_dir"])
        self.meta = json.loads((self.model_dir / "meta.json").read_text(encoding="utf-8"))
        self.model = self.load_model(self.model_dir, context)
        self.model.eval()
        self.initialized = True

    def load_model(self, model_dir: Path, context: Any) -> torch.nn.Module:
        spec = self.meta["model"]
        model = torchship_models.build(spec["kind"], spec["architecture"])
        weights = context.manifest["model"]["serializedFile"]
        if not weights.endswith(".safetensors"):
            raise ValueError(f"refusing to load {weights}: torchship handlers load safetensors only")
        model.load_state_dict(load_file(str(model_dir / weights)))
        return model

    # -------------------------------------------------------------- requests

    def handle(self, data: list[dict], context: Any) -> list[Any]:
        explain = _header(context, 0, "explain") == "True"
        results: list[Any] = [None] * len(data)
        parsed: list[tuple[int, Any]] = []
        v2: dict[int, dict] = {}
        for idx, request in enumerate(data):
            is_v2 = False
            try:
                payload, binary = self.payload(inflated(request), _headers(context, idx))
                is_v2 = oip.is_v2(payload)
                if is_v2:
                    item = self.parse_v2(oip.decode_inputs(payload, binary))
                    v2[idx] = payload
                else:
                    item = self.parse(payload)
                parsed.append((idx, item))
            except (ItemError, oip.ProtocolError) as exc:
                error = exc if isinstance(exc, ItemError) else ItemError(str(exc))
                results[idx] = self._answer(context, idx, error.to_dict(v2=is_v2), error.code)
        if parsed:
            items = [item for _, item in parsed]
            try:
                if explain:
                    with torch.enable_grad():
                        outputs = self.explain(items)
                else:
                    with torch.inference_mode():
                        outputs = self.predict(items)
            except ItemError as exc:  # the request kind itself is unsupported: same answer for each
                for idx, _ in parsed:
                    results[idx] = self._answer(context, idx, exc.to_dict(v2=idx in v2), exc.code)
                return results
            for (idx, _), output in zip(parsed, outputs):
                if idx in v2:
                    results[idx] = self._answer_v2(context, idx, output, v2[idx])
                else:
                    results[idx] = self._answer(context, idx, output, 200)
        return results

    def payload(self, request: dict, headers: dict[str, Any]) -> tuple[Any, bytes]:
        """The request's body, decoded from JSON when it came as bytes or text, and the binary
        tensor data that follows the JSON part under the v2 binary extension (else b"")."""
        body = request.get("data", request.get("body")) if isinstance(request, dict) else None
        if body is None or body == b"" or body == "":
            raise ItemError("empty request body: send a JSON object")
        json_length = oip.header_length(headers)
        if json_length is not None and isinstance(body, (bytes, bytearray)):
            return oip.split_body(bytes(body), json_length)
        if isinstance(body, (bytes, bytearray)) and bytes(body[:6]) == NPY_MAGIC:
            return _load_npy(bytes(body)), b""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ItemError("body is not UTF-8 JSON") from None
        if isinstance(body, str):
            try:
                return json.loads(body), b""
            except ValueError as exc:
                raise ItemError(f"body is not valid JSON: {exc}") from None
        return body, b""

    def parse(self, payload: Any) -> Any:
        raise NotImplementedError

    def predict(self, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def explain(self, inputs: list[Any]) -> list[Any]:
        """Explanations (POST /explanations/...); a model without them answers 501 per item."""
        raise ItemError("this model has no explanations", 501)

    # Open Inference Protocol (v2): tensors in, tensors out. See torchship_oip.
    def parse_v2(self, tensors: dict[str, Any]) -> Any:
        raise ItemError("this model does not take Open Inference Protocol requests", 501)

    def v2_outputs(self, output: Any) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def _answer_v2(self, context: Any, idx: int, output: Any, request: dict) -> bytes:
        binary = oip.wants_binary(request)
        model = context.manifest["model"]
        try:
            body, json_length = oip.encode_response(model.get("modelName", ""), model.get("modelVersion", ""),
                                                    str(request.get("id") or context.get_request_id(idx)),
                                                    self.v2_outputs(output), request, binary)
        except oip.ProtocolError as exc:
            return self._answer(context, idx, ItemError(str(exc)).to_dict(v2=True), 400)
        if json_length is not None:
            context.set_response_header(idx, "Inference-Header-Content-Length", str(json_length))
            context.set_response_content_type(idx, "application/octet-stream")
        else:
            context.set_response_content_type(idx, "application/json")
        return body

    @staticmethod
    def _answer(context: Any, idx: int, body: Any, code: int) -> bytes:
        if code != 200:
            context.set_response_status(code, HTTPStatus(code).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
MAX_INFLATED = 64 * 1024 * 1024  # a gzip body may unpack to this many bytes at most (gzip bombs)


def inflated(request: Any) -> Any:
    """The request with a gzip body unpacked (the client's compress_min_bytes; TorchServe's frontend
    passes such bodies through untouched). No other body starts with gzip's two magic bytes."""
    body = request.get("data", request.get("body")) if isinstance(request, dict) else None
    if not isinstance(body, (bytes, bytearray)) or bytes(body[:2]) != GZIP_MAGIC:
        return request
    import zlib

    unpack = zlib.decompressobj(wbits=31)
    try:
        data = unpack.decompress(bytes(body), MAX_INFLATED)
    except zlib.error as exc:
        raise ItemError(f"the gzip body is corrupt: {exc}") from None
    if unpack.unconsumed_tail:
        raise ItemError(f"the gzip body unpacks to more than {MAX_INFLATED:,} bytes")
    if not unpack.eof or unpack.unused_data:
        raise ItemError("the gzip body is truncated or has data after its end")
    return {**{k: v for k, v in request.items() if k not in ("data", "body")}, "body": data}


def _load_npy(data: bytes) -> Any:
    """A binary tensor body (numpy's .npy format): no JSON to decode. Pickled arrays are refused."""
    import io

    import numpy as np

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ItemError(f"the .npy body cannot be read: {str(exc).splitlines()[0][:120]}") from None


def _headers(context: Any, idx: int) -> dict[str, Any]:
    try:
        return context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return {}


def _header(context: Any, idx: int, name: str) -> Any:
    return _headers(context, idx).get(name)
