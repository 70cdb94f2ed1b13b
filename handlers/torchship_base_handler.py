"""The base of torchship's handlers: one forward per batch, and a bad item never fails the rest.

TorchServe fails a whole batch when a handler raises. Here every item is read and parsed on its
own, and ANY exception while doing so (a bad value, JSON nested too deep, a header that lies about
a size, a bug) becomes that item's own answer: `{"code", "type", "message"}`, the shape of
TorchServe's own errors, through `context.set_response_status`. The good items of the same batch
go through the model together; when that forward pass fails, it is run again item by item, so
only the item that fails on its own gets an error (a 500 with a message: it passed every check,
so the fault is the server's). Weights come from safetensors only (never pickle), and each worker
uses one torch thread unless the archive's model-config says otherwise.

Work is bounded before it is allocated: the body's size (`max_body_bytes`, also for gzip bodies
once unpacked), JSON nesting depth (`MAX_DEPTH`), a .npy body's header (dtype and shape against
the bytes that follow), and in torchship_oip the declared shapes of v2 tensors. Each handler
bounds its own fields (rows, texts, characters, pixels, generation parameters).

`handle` runs a batch in three steps: `read_items` (read, bound and parse each request; each
failure is that request's answer), `forward` (one forward pass for every request parsed, retried
item by item when it fails), `answer_items` (each request's answer, plain JSON or v2). A subclass
implements `parse` (one request's payload -> model input, or ItemError) and `predict` (list of
inputs -> list of JSON-able outputs, one forward for the whole list); a model that takes several
rows, texts or images per request runs them all at once and hands the answers back to each
request with `per_request`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch
import torchship_capture
import torchship_drift
import torchship_models
import torchship_oip as oip
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

MAX_DEPTH = 32  # JSON nesting: deeper bodies answer 400 (Python's own limit is ~1,000 and then it raises)
MAX_BODY = 6 * 1024 * 1024  # default per-model body limit (TorchServe's frontend stops at 6,553,500)
MAX_NPY_DIMS = 8


class ItemError(Exception):
    """One item of a batch is invalid: answered with `code` and `message`, the rest go on."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def to_dict(self, v2: bool = False) -> dict[str, Any]:
        body = {"code": self.code, "type": _type_name(self.code), "message": self.message}
        if v2:
            body["error"] = self.message  # the Open Inference Protocol's error field
        return body


def _type_name(code: int) -> str:
    return {413: "PayloadTooLarge"}.get(code) or HTTPStatus(code).phrase.replace(" ", "").replace("-", "")


def item_error(exc: BaseException, stage: str) -> ItemError:
    """What one item's exception becomes. While reading and parsing, the request caused it (4xx);
    in the forward pass or while encoding the answer, the item passed every check, so it is ours
    (500, with a message)."""
    if isinstance(exc, ItemError):
        return exc
    if isinstance(exc, oip.ProtocolError):
        return ItemError(str(exc))
    if isinstance(exc, RecursionError):
        return ItemError(f"the request is nested too deeply: at most {MAX_DEPTH} levels")
    what = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
    if stage == "parse":
        if isinstance(exc, MemoryError):
            return ItemError("the request needs more memory than this model allows", 413)
        return ItemError(f"the request cannot be read ({what})")
    if isinstance(exc, MemoryError):
        return ItemError("the model ran out of memory on this request", 507)
    return ItemError(f"the model failed on this request ({what})", 500)


@dataclass
class Batch:
    """One batch while it is handled: each request's answer (None until it has one), the model
    input of each request parsed (by its index in the batch, in order), and the decoded Open
    Inference Protocol request of each v2 one."""

    results: list[Any]
    inputs: dict[int, Any] = field(default_factory=dict)
    v2: dict[int, dict] = field(default_factory=dict)
    # each request sampled for capture (torchship_capture): its decoded body, the bytes it was sent as
    # when they are the body alone (None under the v2 binary extension, whose tensors follow the JSON),
    # and the gateway's id for it
    captured: dict[int, tuple[Any, Any, str | None]] = field(default_factory=dict)


class BatchHandler:
    """Batching-aware handler with per-item errors. See the module docstring."""

    max_body_bytes = MAX_BODY  # a body (or an unpacked gzip body) over this answers 413 with a JSON message
    # True when the drift side derives the signals from the recorded input alone
    # (torchship_signals.from_input, which knows the example models' inputs): the capture writes
    # "signals": "input" instead of them, and the request pays nothing for them (mlp's 100 features,
    # sentiment's words, fashion's pixels were most of a captured request's cost). They are worked out
    # here when capture redacts a field, for a v2 binary request or an input over the field bound, and for
    # a subclass that reads input its own way (signals_read_from_input).
    signals_from_input = False
    # Whether the signals reveal the input they are derived from (mlp's, and the template's, are its
    # features): True, or the top-level fields they are read from. Under a redact rule that touches the
    # request (one of those fields, or a binary body), the worker records none of its own for it; with
    # signals_from_input, drift derives them from what the record holds.
    signals_reveal_input: bool | tuple[str, ...] = False

    def __init__(self) -> None:
        self.initialized = False
        self.model: torch.nn.Module | None = None
        self.meta: dict[str, Any] = {}
        self.model_dir: Path | None = None
        self.capture: torchship_capture.Capture | None = None
        self.drift_gauge: torchship_drift.DriftGauge | None = None

    # -------------------------------------------------------------- start-up

    def initialize(self, context: Any) -> None:
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        torch.set_num_threads(int(config.get("threads", 1)))
        # The worker (ts.protocol.otf_message_handler) json-decodes application/json bodies itself,
        # before any handler code runs, and logs a traceback for each one it cannot decode. With
        # this off (read per request, in this worker process only) every body reaches `payload` as
        # the bytes sent, so the body-size and nesting bounds below see every request.
        os.environ["TS_DECODE_INPUT_REQUEST"] = "false"
        self.model_dir = Path(context.system_properties["model_dir"])
        meta_file = self.model_dir / "meta.json"
        # the checkpoint's lineage (torchship.checkpoint.save, the example trainers); an archive
        # packaged from bare weights has none
        self.meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        self.model = self.load_model(self.model_dir, context)
        self.model.eval()
        # the variant `torchship package --optimize` gated on accuracy (the weights file stays the float one)
        self.model = optimized(self.model, config.get("optimize"))
        # sampled capture, when the server torchship started says where and settings.json turns it on
        manifest_model = (getattr(context, "manifest", None) or {}).get("model", {})
        self.capture = torchship_capture.Capture(
            os.environ.get(torchship_capture.CAPTURE_ENV),
            str(getattr(context, "model_name", None) or manifest_model.get("modelName", "")),
            str(manifest_model.get("modelVersion", "")),
        )
        # the drift metric, for a version whose training recorded a reference (torchship_drift)
        reference = self.meta.get("reference")
        if self.capture.dir is not None and isinstance(reference, dict) and isinstance(reference.get("signals"), dict):
            self.drift_gauge = torchship_drift.DriftGauge(
                self.capture.dir, reference, self.capture.model, self.capture.version, self.model_dir
            )
        self.initialized = True

    def load_model(self, model_dir: Path, context: Any) -> torch.nn.Module:
        """The module to run. This default builds torchship's example architectures from meta.json;
        a model of your own overrides it: build the module (from your model file, with
        `self.meta["model"]["architecture"]` or `self.meta["hyper_parameters"]`), then
        `return self.load_weights(module, model_dir, context)`."""
        spec = self.meta.get("model") or {}
        kind = spec.get("kind")
        if kind not in torchship_models.ARCHITECTURES:
            what = f"model kind {kind!r} in meta.json" if self.meta else "no meta.json in the archive"
            raise ValueError(
                f"{what}: the base handler builds only torchship's example architectures "
                f"({', '.join(sorted(torchship_models.ARCHITECTURES))}). Override load_model(self, "
                "model_dir, context) in your handler: build your model, then return "
                "self.load_weights(model, model_dir, context)"
            )
        return self.load_weights(torchship_models.build(kind, spec["architecture"]), model_dir, context)

    def load_weights(self, model: torch.nn.Module, model_dir: Path, context: Any) -> torch.nn.Module:
        """`model` with the archive's safetensors weights loaded (strictly: every name must match); returns it.

        Encrypted weights (`<name>.safetensors.tsenc`, `torchship package --encrypt`) are decrypted in
        memory with the model key the server hands its workers ($TORCHSHIP_MODEL_KEYS): the plaintext
        never touches the disk. A missing or wrong key, or an altered chunk, fails the load with one
        line that says which (torchship_crypto.ModelKeyError).
        """
        weights = context.manifest["model"].get("serializedFile")
        if not weights:
            raise ValueError("the archive has no weights file (package it with --checkpoint or --weights)")
        if weights.endswith(".safetensors.tsenc"):
            import torchship_crypto  # packed beside the handler in encrypted archives only

            plain = torchship_crypto.open_member(model_dir, weights, os.environ.get(torchship_crypto.KEYRING_ENV))
            state = tensors_in(plain)  # views of the decrypted buffer: no further copy before load_state_dict
        elif weights.endswith(".safetensors"):
            state = load_file(str(model_dir / weights))
        else:
            raise ValueError(f"refusing to load {weights}: torchship handlers load safetensors only")
        model.load_state_dict(state)
        return model

    # -------------------------------------------------------------- requests

    def handle(self, data: list[dict], context: Any) -> list[Any]:
        """A batch in three steps: (1) read and parse each request, each failure that request's own
        answer; (2) one forward pass for every request parsed; (3) answer each of them."""
        started = time.perf_counter()
        explain = _header(context, 0, "explain") == "True"
        label_batch(context, len(data))
        picked = self.capture.sampled(len(data)) if self.capture is not None else []
        batch = self.read_items(data, context, picked)
        if batch.inputs:
            outputs = self.forward(list(batch.inputs.values()), explain)
            self.answer_items(context, batch, outputs)
        if picked:
            self.record_captured(context, data, batch, picked, started)
        if self.drift_gauge is not None and self.capture is not None and self.capture.settings["sample"]:
            self.drift_gauge.tick(context, self.capture.settings["drift_every_s"], torchship_capture.DRIFT_WINDOW)
        return batch.results

    # step 1: read and parse each request

    def read_items(self, data: list[dict], context: Any, captured: Sequence[int] = ()) -> Batch:
        """Every request of the batch read, bounded and parsed into its model input; a request
        that fails any of it has its error answer in `results` already. Nothing raised while
        reading one request reaches the rest of the batch. The decoded bodies of the requests
        `captured` are kept for the capture."""
        batch = Batch(results=[None] * len(data))
        for idx, request in enumerate(data):
            is_v2 = False
            try:
                headers = _headers(context, idx)
                is_v2 = oip.has_binary_header(headers)  # the binary extension: a v2 request for sure
                payload, binary = self.read(request, headers)
                if idx in captured:
                    kept = self.captured_body(payload)
                    batch.captured[idx] = (kept, None if is_v2 else _body_of(request), _gateway_id(headers))
                is_v2 = is_v2 or oip.is_v2(payload)
                if is_v2:
                    batch.inputs[idx] = self.parse_v2(oip.decode_inputs(payload, binary))
                    batch.v2[idx] = payload
                else:
                    batch.inputs[idx] = self.parse(payload)
            except Exception as exc:  # noqa: BLE001 - every exception of one item is that item's answer
                error = item_error(exc, "parse")
                if not isinstance(exc, (ItemError, oip.ProtocolError)):
                    logger.warning("request %d: %s", idx, error.message, exc_info=True)
                batch.results[idx] = self._error(context, idx, error, is_v2)
        return batch

    def read(self, request: Any, headers: dict[str, Any]) -> tuple[Any, bytes]:
        """One request's payload and v2 binary data (see `payload`), within this model's body size
        (as sent, and once a gzip body is unpacked) and JSON nesting depth."""
        request = inflated(bounded(request, self.max_body_bytes), self.max_body_bytes)
        payload, binary = self.payload(request, headers)
        check_depth(payload)  # JSON (or a JSON part) nested deeper than MAX_DEPTH: 400
        return payload, binary

    # step 2: one forward pass

    def forward(self, items: list[Any], explain: bool = False) -> list[Any]:
        """The model's outputs, one per item; an item whose forward fails gets an ItemError instead.
        A failing batch is run again item by item, so one item cannot fail the others."""
        try:
            if explain:
                with torch.enable_grad():
                    outputs = self.explain(items)
            else:
                with torch.inference_mode():
                    outputs = self.predict(items)
            if not isinstance(outputs, list) or len(outputs) != len(items):
                raise RuntimeError(
                    f"{type(outputs).__name__} of {len(outputs) if isinstance(outputs, list) else '?'}"
                    f" outputs for {len(items)} inputs"
                )
            return outputs
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1:
                if not isinstance(exc, ItemError):
                    logger.warning("the forward pass failed on one request", exc_info=True)
                return [item_error(exc, "forward")]
            if not isinstance(exc, ItemError):
                logger.warning(
                    "the forward pass of a batch of %d failed: running it item by item", len(items), exc_info=True
                )
            return [self.forward([item], explain)[0] for item in items]

    @staticmethod
    def per_request(answers: Sequence[Any], sizes: Iterable[int], single: Iterable[bool] | None = None) -> list[Any]:
        """Answers made for the whole batch at once (one per row, text or image of every request,
        in order) split back to the requests that sent `sizes` of them each. A request marked
        `single` (it sent one item, not a list) gets its one answer itself rather than a list."""
        out, start = [], 0
        for size, alone in zip(sizes, single if single is not None else itertools.repeat(False)):
            mine = answers[start : start + size]
            start += size
            out.append(mine[0] if alone else mine)
        if start != len(answers):
            raise RuntimeError(f"{len(answers)} answers for {start} items")
        return out

    # step 3: answer each request

    def answer_items(self, context: Any, batch: Batch, outputs: list[Any]) -> None:
        """Each parsed request's answer, from its output, into `batch.results`: v2 requests in the
        protocol's form, errors as JSON with their own status."""
        for idx, output in zip(batch.inputs, outputs):
            is_v2 = idx in batch.v2
            if isinstance(output, ItemError):
                batch.results[idx] = self._error(context, idx, output, is_v2)
                continue
            try:
                if is_v2:
                    batch.results[idx] = self._answer_v2(context, idx, output, batch.v2[idx])
                else:
                    batch.results[idx] = self._answer(context, idx, output, 200)
            except Exception as exc:  # an answer that cannot be encoded (NaN, a bug): this item's 500
                logger.warning("request %d: the answer cannot be encoded", idx, exc_info=True)
                batch.results[idx] = self._error(context, idx, item_error(exc, "answer"), is_v2)

    # sampled capture

    def record_captured(
        self, context: Any, data: list[dict], batch: Batch, picked: Sequence[int], started: float
    ) -> None:
        """The sampled requests of a finished batch into the capture (torchship_capture): decoded body
        (redacted there), the answer the caller gets, its status, the batch's time in the worker and the
        model's drift signals. Never fails the batch."""
        assert self.capture is not None
        capture = self.capture
        head = capture.batch_head(time.time(), (time.perf_counter() - started) * 1000, len(data))
        # the loop's lookups are hoisted: this runs for every sampled request
        line, input_bytes, answer_bytes = capture.line, capture.input_bytes, torchship_capture.answer_bytes
        kept, inputs, results = batch.captured, batch.inputs, batch.results
        # each request's id and status as the context's getters read them, without their calls
        ids, processors = context.request_ids or {}, context.request_processor
        # drift derives the signals from the recorded input, unless capture redacts a field (it may be this
        # one): then the worker works them out, unless they would reveal what was redacted
        rules = capture.settings.get("redact")
        reveal = bool(rules) and self.signals_reveal_input
        from_input = signals_read_from_input(type(self)) and (not rules or reveal)
        lines = []
        for idx in picked:
            try:
                raw = body = None
                if idx in kept:
                    body, raw, gateway_id = kept[idx]
                    record = input_bytes(body, raw)
                else:  # it failed to read: what was sent, as text when it is UTF-8 (by its size under a
                    # redact rule: it was never read, so what to redact in it is unknown)
                    sent = data[idx]
                    record = _redacted_size(sent) if rules else torchship_capture.json_bytes(_raw_body(sent))
                    gateway_id = _gateway_id(_headers(context, idx))
                signals: Any = None
                if idx in inputs:  # parsed: its signals, or where drift finds them: the whole input recorded
                    # (not under the v2 binary extension, whose tensors the record leaves out, nor over the
                    # field bound, nor a JSON body shaped like the record's own encodings) and cheap to read
                    # again (input_has_signals)
                    model_input = inputs[idx]
                    later = from_input and raw is not None and not record.startswith(OMITTED)
                    if later and not _like_an_encoding(body) and self.input_has_signals(model_input):
                        signals = "input"
                    elif not (reveal and capture.redacts(body, raw, self.signals_reveal_input)):
                        signals = self.signals(model_input)
                lines.append(
                    line(
                        head,
                        ids.get(idx),
                        int(processors[idx].get_response_status_code() or 200),
                        record,
                        answer_bytes(results[idx]),
                        signals,
                        gateway_id,  # a live rollout pairs the default's and the shadow's answers by it
                    )
                )
            except Exception:  # noqa: BLE001 - a request the capture cannot describe is left out
                logger.warning("request %d: not captured", idx, exc_info=True)
        capture.write(lines)

    def captured_body(self, payload: Any) -> Any:
        """What the capture records of a request's decoded body (`payload`'s first part): the body itself,
        unless a handler's `payload` wraps what was sent (the fashion handler's image bytes)."""
        return payload

    def input_has_signals(self, model_input: Any) -> bool:
        """With `signals_from_input`: whether drift derives this parsed request's signals from its recorded
        input (True); False has them worked out here (the fashion handler: a large image, which drift would
        decode again at every measurement)."""
        return True

    def signals(self, model_input: Any) -> dict[str, Any] | bytes | None:
        """What drift is measured on, derived from one parsed request (none by default; see the examples):
        a dict of lists of values, or that dict as `torchship_capture.signals_json` gives it (signals a
        handler works out ahead of time, once, cost nothing per request)."""
        return None

    # what a subclass changes

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
            return load_npy(bytes(body)), b""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ItemError("body is not UTF-8 JSON") from None
        if isinstance(body, str):
            return loads(body), b""
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
            body, json_length = oip.encode_response(
                model.get("modelName", ""),
                model.get("modelVersion", ""),
                str(request.get("id") or context.get_request_id(idx)),
                self.v2_outputs(output),
                request,
                binary,
            )
        except oip.ProtocolError as exc:
            return self._error(context, idx, ItemError(str(exc)), True)
        if json_length is not None:
            context.set_response_header(idx, "Inference-Header-Content-Length", str(json_length))
            context.set_response_content_type(idx, "application/octet-stream")
        else:
            context.set_response_content_type(idx, "application/json")
        return body

    @classmethod
    def _error(cls, context: Any, idx: int, error: ItemError, v2: bool) -> bytes:
        """An error answer: always plain JSON (v2 ones with the protocol's `error` field too, and
        never the binary extension's header, so any v2 client can read it)."""
        return cls._answer(context, idx, error.to_dict(v2=v2), error.code)

    @staticmethod
    def _answer(context: Any, idx: int, body: Any, code: int) -> bytes:
        encoded = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        if code != 200:
            context.set_response_status(code, HTTPStatus(code).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return encoded


# -------------------------------------------------------------- optimized variants


OPTIMIZE_VARIANTS = {
    # name: the layer types it changes (a model with none of them is left as it is)
    "int8-dynamic": (torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU),
    "channels-last": (torch.nn.Conv2d,),
}


def optimized(model: torch.nn.Module, variant: Any) -> torch.nn.Module:
    """`model` (weights loaded, in eval mode) as the cheaper variant the archive's model-config names
    (`handler.optimize`, which `torchship package --optimize` writes once the variant kept the held-out
    accuracy within 0.5 points; archiver/optimize.py runs this very function for that gate). The
    weights in the archive stay the signed float ones; the variant is made here, in memory, at load:

    - `int8-dynamic`: Linear/LSTM/GRU weights to int8, activations quantized on the fly per call
      (torch.ao.quantization.quantize_dynamic); the other layers stay float.
    - `channels-last`: convolution weights in NHWC order (oneDNN's fast path for conv2d); inputs
      stay NCHW (torch converts them), answers are the same up to float rounding.

    Absent, None or "none": the model as it is. Any other value fails the load (ValueError): a worker
    never serves something other than what was gated."""
    if variant is None or variant == "none":
        return model
    if not isinstance(variant, str) or variant not in OPTIMIZE_VARIANTS:
        raise ValueError(
            f"model-config handler.optimize is {str(variant)[:40]!r}: this handler knows "
            f"{', '.join(sorted(OPTIMIZE_VARIANTS))} (or none)"
        )
    if variant == "channels-last":
        return model.to(memory_format=torch.channels_last)
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.10+ marks torch.ao.quantization deprecated (torchao's quantize_)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, set(OPTIMIZE_VARIANTS[variant]), dtype=torch.qint8)


NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
MAX_INFLATED = 64 * 1024 * 1024  # the most any gzip body may unpack to (each handler's max_body_bytes is lower)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    **{
        name: getattr(torch, attr)
        for name, attr in (
            ("F8_E4M3", "float8_e4m3fn"),
            ("F8_E5M2", "float8_e5m2"),
            ("U16", "uint16"),
            ("U32", "uint32"),
            ("U64", "uint64"),
        )
        if hasattr(torch, attr)
    },
}


def tensors_in(buffer: bytearray) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in memory, as views of `buffer` (no copy).

    The layout: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}}, then the data. The whole layout is checked first, by safetensors' own rules
    (torchship_crypto.safetensors_header, the check package and verify run too): a header that is
    not one object, names a tensor twice, or whose tensors overlap, leave gaps or trailing bytes
    or are unaligned is refused (ValueError) before anything is viewed.
    """
    try:
        import torchship_crypto  # beside this file in the worker (encrypted archives) and in handlers/
    except ImportError:  # imported as part of the torchship package
        from torchship.handlers import torchship_crypto  # type: ignore[no-redef]

    with memoryview(buffer) as view:  # the header is copied out, never the data
        header, problem = torchship_crypto.safetensors_header(view, len(buffer))
    if header is None:
        raise ValueError(f"the weights are not a safetensors file torchship loads: {problem}")
    base = 8 + int.from_bytes(buffer[:8], "little")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(
                f"the weights' safetensors entry {name!r} is of dtype {entry['dtype']}, which torch here lacks"
            )
        shape, (begin, _) = entry["shape"], entry["data_offsets"]
        count = math.prod(shape)
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin)
        out[name] = flat.reshape(shape)
    return out


OMITTED = b'{"omitted_bytes"'  # how a record's input over the field bound begins (torchship_capture)
_INPUT_METHODS = ("payload", "parse", "parse_v2", "captured_body", "signals", "input_has_signals")


@functools.cache
def signals_read_from_input(cls: type) -> bool:
    """Whether drift may derive `cls`'s signals from a recorded input: `signals_from_input` is True, and
    no subclass of the class that said so reads input or works out signals its own way (a handler built
    on the fashion handler that inverts images in `parse` must not have drift read the raw image)."""
    if not getattr(cls, "signals_from_input", False):
        return False
    said = next(c for c in cls.__mro__ if "signals_from_input" in vars(c))
    below = cls.__mro__[: cls.__mro__.index(said)]
    return not any(name in vars(c) for c in below for name in _INPUT_METHODS)


def _like_an_encoding(body: Any) -> bool:
    """Whether a JSON body reads like the capture's own encoding of a binary one (an .npy array's
    {"npy", "data"}, bytes' {"base64"}): drift could not tell which was sent, so the worker works out
    its signals."""
    return type(body) is dict and len(body) <= 2 and ("npy" in body or "base64" in body)


def _redacted_size(request: Any) -> bytes:
    """The record of a request that failed to read while capture redacts: its size as sent, no more."""
    body = _body_of(request)
    size = len(body) if isinstance(body, (bytes, bytearray, str)) else len(torchship_capture.to_json(body))
    return b'{"redacted_bytes":%d}' % size


def _raw_body(request: Any) -> Any:
    """A request's body as sent (text when it is UTF-8), for the capture of a request that failed to parse."""
    body = _body_of(request)
    if isinstance(body, (bytes, bytearray)):
        try:
            return bytes(body[: torchship_capture.MAX_FIELD_BYTES + 1]).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(body[: torchship_capture.MAX_FIELD_BYTES + 1])
    return body


def _body_of(request: Any) -> Any:
    return request.get("data", request.get("body")) if isinstance(request, dict) else None


def bounded(request: Any, limit: int) -> Any:
    """The request, unless its body (as sent) is over `limit` bytes: then a 413 with a message."""
    body = _body_of(request)
    if isinstance(body, (bytes, bytearray, str)) and len(body) > limit:
        raise ItemError(f"the body has {len(body):,} bytes; this model takes at most {limit:,}", 413)
    return request


def inflated(request: Any, limit: int = MAX_INFLATED) -> Any:
    """The request with a gzip body unpacked (the client's compress_min_bytes; TorchServe's frontend
    passes such bodies through untouched), to at most `limit` bytes (gzip bombs). No other body
    starts with gzip's two magic bytes."""
    body = _body_of(request)
    if not isinstance(body, (bytes, bytearray)) or bytes(body[:2]) != GZIP_MAGIC:
        return request
    import zlib

    unpack = zlib.decompressobj(wbits=31)
    try:
        data = unpack.decompress(bytes(body), limit)
    except zlib.error as exc:
        raise ItemError(f"the gzip body is corrupt: {exc}") from None
    if unpack.unconsumed_tail:
        raise ItemError(f"the gzip body unpacks to more than {limit:,} bytes", 413)
    if not unpack.eof or unpack.unused_data:
        raise ItemError("the gzip body is truncated or has data after its end")
    return {**{k: v for k, v in request.items() if k not in ("data", "body")}, "body": data}


def loads(text: str | bytes) -> Any:
    """JSON text decoded, or ItemError: invalid JSON, or nested ~1,000 deep (Python's decoder
    raises RecursionError there, cheaply; `read` refuses anything deeper than MAX_DEPTH)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ItemError(f"the JSON is nested too deeply: at most {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise ItemError(f"body is not valid JSON: {str(exc)[:200]}") from None


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """ItemError when lists/objects nest deeper than `limit`. Iterative (no recursion), and stops
    at the first level too deep; the work is bounded by the size of the body."""
    if type(value) is not list and type(value) is not dict:
        return
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ItemError(f"the JSON is nested too deeply: at most {limit} levels")
        for child in node.values() if type(node) is dict else node:
            if type(child) is list or type(child) is dict:
                stack.append((child, depth + 1))


def load_npy(data: bytes) -> Any:
    """A binary tensor body (numpy's .npy format): no JSON to decode. The header is read first and
    checked against the bytes that follow (a header may claim any shape), before anything is
    allocated; the array is then a view of the body. Pickled (object) and structured arrays are
    refused."""
    import io

    import numpy as np
    from numpy.lib import format as npy

    fp = io.BytesIO(data)
    try:
        version = npy.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        raise ItemError(
            f"the .npy body cannot be read: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}"
        ) from None
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise ItemError(f"the .npy body cannot be read: dtype {str(dtype)[:40]} is not a plain numeric type")
    if len(shape) > MAX_NPY_DIMS:
        raise ItemError(f"the .npy body cannot be read: {len(shape)} dimensions; at most {MAX_NPY_DIMS}")
    count = math.prod(shape)
    held = len(data) - fp.tell()
    if count * dtype.itemsize != held:
        raise ItemError(
            f"the .npy body cannot be read: its header declares shape {list(shape)} of {dtype} "
            f"({count * dtype.itemsize:,} bytes) but {held:,} bytes follow it"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=fp.tell())
    return array.reshape(shape, order="F" if fortran else "C")


BATCH_HEADER = "X-Batch-Size"


def label_batch(context: Any, size: int) -> None:
    """Each answer says how many requests its batch held (the X-Batch-Size header): how a caller,
    a test or a benchmark sees that dynamic batching happened."""
    for idx in range(size):
        try:
            context.set_response_header(idx, BATCH_HEADER, str(size))
        except (AttributeError, IndexError, TypeError):
            return


def _headers(context: Any, idx: int) -> dict[str, Any]:
    try:
        return context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError, KeyError):
        return {}


def _header(context: Any, idx: int, name: str) -> Any:
    return _headers(context, idx).get(name)


GATEWAY_ID = "X-Request-Id"  # stamped by torchship's gateway on every request it passes on (and on its mirror)


def _gateway_id(headers: dict[str, Any]) -> str | None:
    """The id torchship's gateway stamped on a request (its headers), at most 64 characters."""
    value = headers.get(GATEWAY_ID) or headers.get(GATEWAY_ID.lower())
    return value[:64] if isinstance(value, str) else None
