"""Handler for `textgen`: text generated character by character, streamed as it is made.

Request:  {"prompt": "This film", "max_new_tokens": 100, "temperature": 0.8, "top_k": 20, "seed": 1}
Answer:   chunks of text, sent as they are generated (HTTP chunked transfer), then the last one.
Limits answer 400 before anything streams: prompt a string of at most 500 characters,
max_new_tokens 1..500, temperature 0 (always the likeliest character) or 0.01..2, top_k
1..vocabulary, seed an integer (the same seed gives the same text); a body over 64 KiB answers 413.
Requests are read by the base, as in every handler (gzip bodies, size and JSON depth bounds, the
v2 binary header); an Open Inference Protocol request answers 501 in the protocol's error form.
A batch is generated in lock step: one forward pass per step for all its requests, each with its
own sampler; a step that fails for the batch is run again request by request, so one request
cannot stop the others' streams.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import torch
from torchship_base_handler import BatchHandler, ItemError, item_error, label_batch

logger = logging.getLogger(__name__)

MAX_PROMPT = 500
MAX_NEW = 500
MIN_TEMPERATURE = 0.01  # below this (but above 0) logits / temperature overflow float32: use 0 for greedy
MAX_TEMPERATURE = 2.0
CHUNK = 4  # characters per streamed chunk


class TextgenHandler(BatchHandler):
    max_body_bytes = 64 * 1024

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        vocab = json.loads((self.model_dir / "chars.json").read_text(encoding="utf-8"))
        self.chars = ["\ufffd", *vocab["chars"]]
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.context_len = int(vocab["context"])

    def parse(self, payload: Any) -> dict:
        if not isinstance(payload, dict) or "prompt" not in payload:
            raise ItemError('missing field \'prompt\': expected {"prompt": "...", "max_new_tokens": 100}')
        prompt = payload["prompt"]
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
            raise ItemError(f"'prompt' must be a string of at most {MAX_PROMPT} characters")
        new = _int(payload.get("max_new_tokens", 100), "max_new_tokens", 1, MAX_NEW)
        top_k = _int(payload.get("top_k", 20), "top_k", 1, len(self.chars))
        temperature = payload.get("temperature", 0.8)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE)
        ):
            raise ItemError(
                f"'temperature' must be 0 (greedy) or a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}"
            )
        seed = payload.get("seed", random.randrange(2**31))
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ItemError("'seed' must be a non-negative integer")
        return {
            "prompt": prompt,
            "new": new,
            "top_k": top_k,
            "temperature": float(temperature),
            "generator": torch.Generator().manual_seed(seed),
        }

    def handle(self, data: list[dict], context: Any) -> list[Any]:
        from ts.handler_utils.utils import send_intermediate_predict_response

        label_batch(context, len(data))
        # step 1 as in every handler: bounds, gzip, JSON depth, v2 headers, each failure its own answer
        batch = self.read_items(data, context)
        results, jobs = batch.results, batch.inputs
        if not jobs:
            return results
        for idx in jobs:
            context.set_response_content_type(idx, "text/plain; charset=utf-8")
        streams = {
            idx: [self.ids.get(c, 0) for c in job["prompt"]] or [self.ids.get("\n", 0)] for idx, job in jobs.items()
        }
        pending = {idx: "" for idx in jobs}
        failed: dict[int, ItemError] = {}
        streaming: set[int] = set()  # requests that sent a chunk already: their status is 200 for good
        request_ids = context.request_ids
        with torch.inference_mode():
            for step in range(max(job["new"] for job in jobs.values())):
                active = [idx for idx, job in jobs.items() if step < job["new"] and idx not in failed]
                if not active:
                    break
                for idx, logits in self._step(active, streams).items():
                    try:
                        if isinstance(logits, Exception):
                            raise logits
                        token = self._sample(logits, jobs[idx])
                    except Exception as exc:  # noqa: BLE001 - this request's own error
                        logger.warning("textgen: generation failed for one request", exc_info=True)
                        failed[idx] = item_error(exc, "forward")
                        continue
                    streams[idx].append(token)
                    pending[idx] += self.chars[token]
                ready = {
                    i: pending[i]
                    for i in active
                    if i not in failed and len(pending[i]) >= CHUNK and step + 1 < jobs[i]["new"]
                }
                if ready:
                    send_intermediate_predict_response(
                        [ready.get(i, "") for i in range(len(data))],
                        {i: request_ids[i] for i in ready},
                        "Intermediate Prediction success",
                        200,
                        context,
                    )
                    streaming.update(ready)
                    for i in ready:
                        pending[i] = ""
        for idx in jobs:
            if idx in failed and idx not in streaming:
                results[idx] = self._error(context, idx, failed[idx], idx in batch.v2)
            else:  # done, or failed after its first chunk: the stream ends with what was made
                results[idx] = pending[idx]
        return results

    def _step(self, active: list[int], streams: dict[int, list[int]]) -> dict[int, Any]:
        """Each active request's next-character logits (or the exception its forward raised): one
        forward for all of them, or one each when the batch's forward fails."""
        try:
            return dict(zip(active, self._logits(active, streams)))
        except Exception as exc:  # noqa: BLE001
            if len(active) == 1:
                return {active[0]: exc}
            logger.warning("textgen: a batched step failed; running it request by request", exc_info=True)
            return {idx: out for i in active for idx, out in self._step([i], streams).items()}

    def _logits(self, active: list[int], streams: dict[int, list[int]]) -> list[torch.Tensor]:
        width = min(self.context_len, max(len(streams[i]) for i in active))
        batch = torch.zeros(len(active), width, dtype=torch.long)
        for row, idx in enumerate(active):  # left-aligned windows, read at each one's last position
            window = streams[idx][-width:]
            batch[row, : len(window)] = torch.tensor(window)
        logits = self.model(batch)
        return [logits[row, min(len(streams[idx]), width) - 1] for row, idx in enumerate(active)]

    @staticmethod
    def _sample(logits: torch.Tensor, job: dict) -> int:
        if job["temperature"] == 0:
            return int(logits.argmax())
        values, indices = torch.topk(logits / job["temperature"], job["top_k"])
        probs = torch.softmax(values, dim=-1)
        if not bool(torch.isfinite(probs).all()):  # cannot happen within the bounds; never sample NaN
            return int(indices[0])
        choice = torch.multinomial(probs, 1, generator=job["generator"])
        return int(indices[choice])


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ItemError(f"'{name}' must be an integer from {low} to {high}")
    return value
