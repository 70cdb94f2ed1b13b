"""A requests transport adapter that records requests and answers from a script, for client unit tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter


class FakeTransport(BaseAdapter):
    def __init__(self, responder: Callable[[requests.PreparedRequest], tuple[int, object]]):
        super().__init__()
        self.responder = responder
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        status, body = self.responder(request)
        if isinstance(body, Exception):
            raise body
        resp = requests.Response()
        resp.status_code = status
        resp._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp._content_consumed = True
        resp.headers["Content-Type"] = "application/json"
        resp.url = request.url
        resp.request = request
        return resp

    def close(self):
        pass

    # helpers for assertions
    def last(self):
        return self.requests[-1]

    @staticmethod
    def query(request) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}

    @staticmethod
    def path(request) -> str:
        return urlsplit(request.url).path


def session_with(transport: FakeTransport) -> requests.Session:
    s = requests.Session()
    s.mount("http://", transport)
    return s
