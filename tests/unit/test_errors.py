import pytest

from torchship import errors as E
from torchship.sdk.errors import error_from_response


@pytest.mark.parametrize(
    "status, body, cls, err_type, in_message",
    [
        (
            400,
            b'{"code":400,"type":"InvalidKeyException","message":"Token Authorization failed."}',
            E.Unauthorized,
            "InvalidKeyException",
            "Token Authorization failed",
        ),
        (
            400,
            b'{"code":400,"type":"BadRequest","message":"\'data\' has shape [2]"}',
            E.BadRequest,
            "BadRequest",
            "shape [2]",
        ),
        (
            403,
            b'{"code":403,"type":"InvalidModelVersionException","message":"Cannot remove default version for model mlp"}',
            E.Forbidden,
            "InvalidModelVersionException",
            "default version",
        ),
        (
            404,
            b'{"code":404,"type":"ModelNotFoundException","message":"Model not found: nope"}',
            E.ModelNotFound,
            "ModelNotFoundException",
            "nope",
        ),
        (
            405,
            b'{"code":405,"type":"MethodNotAllowedException","message":"Requested method is not allowed"}',
            E.ModelAPIDisabled,
            "MethodNotAllowedException",
            "not allowed",
        ),
        (
            409,
            b'{"code":409,"type":"ConflictStatusException","message":"Model version 1.0 is already registered for model mlp"}',
            E.ModelAlreadyExists,
            "ConflictStatusException",
            "already registered",
        ),
        (413, b"", E.PayloadTooLarge, "PayloadTooLarge", "too large"),
        (
            500,
            b'{"code":500,"type":"InternalServerException","message":"Worker died."}',
            E.WorkerDied,
            "InternalServerException",
            "Worker died",
        ),
        (
            507,
            b'{"code":507,"type":"InternalServerException","message":"Worker died."}',
            E.WorkerDied,
            "InternalServerException",
            "Worker died",
        ),
        (
            500,
            b'{"code":500,"type":"InternalServerException","message":"boom"}',
            E.ServerError,
            "InternalServerException",
            "boom",
        ),
        (
            503,
            b'{"code":503,"type":"ServiceUnavailableException","message":"Model \\"mlp\\" has no worker to serve inference request."}',
            E.ServiceUnavailable,
            "ServiceUnavailableException",
            "no worker",
        ),
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", E.ServerError, "HTTP502", "502 Bad Gateway"),
        (503, b"", E.ServiceUnavailable, "ServiceUnavailable", "no details"),
        (400, b"not json at all", E.BadRequest, "BadRequest", "not json at all"),
        (418, b"{}", E.APIError, "HTTP418", "no details"),
        (400, b"\xff\xfe\x00garbage", E.BadRequest, "BadRequest", "garbage"),
    ],
)
def test_error_mapping(status, body, cls, err_type, in_message):
    err = error_from_response(status, body, "http://127.0.0.1:8081/models")
    assert type(err) is cls
    assert err.status == status and err.type == err_type
    assert in_message in err.message
    assert err.url == "http://127.0.0.1:8081/models"
    assert isinstance(err, E.TorchServeError)


def test_messages_say_what_to_do():
    err = error_from_response(
        405,
        b'{"code":405,"type":"MethodNotAllowedException","message":"Requested method is not allowed, please refer to API document."}',
    )
    assert "set enable_model_api=true in config.properties" in str(err)
    err = error_from_response(403, b'{"code":403,"type":"X","message":"Cannot remove default version for model mlp"}')
    assert "set-default" in str(err)


def test_str_body_and_none_body():
    assert type(error_from_response(404, '{"message": "gone"}')) is E.ModelNotFound
    assert error_from_response(500, None).message == "no details in the answer"
