"""ServerLogs: one model's lines, the cause of a worker's failure, keys masked (no server here:
the lines are TorchServe 0.12.0's, as its log4j2 pattern writes them)."""

from __future__ import annotations

import json

import pytest

from torchship.sdk.errors import ServerError, error_from_response
from torchship.sdk.logs import MASK, ServerLogs

T = "2026-11-30T11:38:28,702"


def worker(model: str, text: str, *, port: int = 9000, stream: str = "stdout", level: str = "INFO ") -> str:
    return f"{T} [{level}] W-{port}-{model}-{stream} MODEL_LOG - {text}"


def frontend(text: str, thread: str = "epollEventLoopGroup-3-1", level: str = "INFO ") -> str:
    return f"{T} [{level}] {thread} org.pytorch.serve.wlm.ModelManager - {text}"


# the worker's output when a handler's import fails (shortened): TorchServe's loader tries a second
# import whose error hides the first
IMPORT_FAILURE = [
    "Backend worker process died.",
    "Traceback (most recent call last):",
    '  File "/venv/lib/python3.11/site-packages/ts/model_loader.py", line 108, in load',
    "    module, function_name = self._load_handler_file(handler)",
    '  File "/tmp/models/abc/tv_handler.py", line 1, in <module>',
    "    import torchvision  # noqa",
    "ModuleNotFoundError: No module named 'torchvision'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/venv/lib/python3.11/site-packages/ts/model_loader.py", line 159, in _load_default_handler',
    '    module = importlib.import_module(module_name, "ts.torch_handler")',
    "             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    "ModuleNotFoundError: No module named 'ts.torch_handler.tv_handler'",
]


def write(folder, name: str, lines: list[str]) -> None:
    with open(folder / name, "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "logs").mkdir()
    return ServerLogs(tmp_path / "logs")


def test_the_cause_of_a_chained_import_failure_is_the_first_exception(logs):
    write(logs.log_dir, "model_log.log", [worker("tv_1.0", t) for t in IMPORT_FAILURE])
    cause = logs.cause("tv", "1.0")
    assert cause is not None
    assert cause.line == "ModuleNotFoundError: No module named 'torchvision'"
    assert cause.number == 7 and cause.file == logs.log_dir / "model_log.log"
    assert str(cause).endswith(f"(see {logs.log_dir / 'model_log.log'}, line 7)")


def test_the_cause_is_the_last_failure_and_only_since_the_mark(logs):
    write(logs.log_dir, "model_log.log", [worker("m_1.0", t) for t in IMPORT_FAILURE])
    mark = logs.mark()
    assert logs.cause("m", "1.0", since=mark) is None  # nothing new yet
    later = ["Traceback (most recent call last):", '  File "h.py", line 3, in initialize', "KeyError: 'weights'"]
    write(logs.log_dir, "model_log.log", [worker("m_1.0", t, port=9001) for t in later])
    cause = logs.cause("m", "1.0", since=mark)
    assert cause is not None and cause.line == "KeyError: 'weights'"
    assert cause.number == len(IMPORT_FAILURE) + 3  # counted from the top of the file, not the mark


def test_another_models_traceback_is_not_the_cause(logs):
    write(logs.log_dir, "model_log.log", [worker("other_1.0", t) for t in IMPORT_FAILURE])
    write(logs.log_dir, "model_log.log", [worker("m_1.0", "Backend worker process died.")])
    assert logs.cause("m", "1.0") is None
    assert logs.cause("other") is not None
    assert logs.cause("m", "2.0") is None


def test_without_a_traceback_the_last_stderr_line_is_the_cause(logs):
    write(
        logs.log_dir,
        "model_log.log",
        [
            worker("m_1.0", "loading weights"),
            worker("m_1.0", "fatal: out of shared memory", stream="stderr", level="WARN "),
            worker("m_1.0", "Backend worker process died."),
        ],
    )
    cause = logs.cause("m", "1.0")
    assert cause is not None and cause.line == "fatal: out of shared memory" and cause.number == 2


def test_a_line_still_being_written_is_left_for_later(logs):
    write(logs.log_dir, "model_log.log", [worker("m_1.0", "Traceback (most recent call last):")])
    with open(logs.log_dir / "model_log.log", "a") as f:
        f.write(worker("m_1.0", "ValueError: half"))  # no newline yet
    assert [line.number for line in logs.lines("m")] == [1]


def test_a_models_lines_come_from_both_files_in_time_order(logs):
    write(
        logs.log_dir,
        "ts_log.log",
        [
            frontend("Model mlp loaded.").replace(T, "2026-11-30T11:00:00,000"),
            frontend("Model mlp-2 loaded.").replace(T, "2026-11-30T11:00:00,500"),
            frontend("Load model failed: mlp, error: Worker died.", thread="W-9000-mlp_1.0").replace(
                T, "2026-11-30T11:00:02,000"
            ),
            "java.lang.IllegalStateException: boom",  # a stack trace continues the line before it
        ],
    )
    write(
        logs.log_dir,
        "model_log.log",
        [
            worker("mlp_1.0", "Torch worker started.").replace(T, "2026-11-30T11:00:01,000"),
            worker("mlp-2_1.0", "Torch worker started.").replace(T, "2026-11-30T11:00:01,500"),
        ],
    )
    texts = [line.text.rsplit(" - ", 1)[-1] for line in logs.lines("mlp")]
    assert texts == [
        "Model mlp loaded.",
        "Torch worker started.",
        "Load model failed: mlp, error: Worker died.",
        "java.lang.IllegalStateException: boom",
    ]
    assert len(logs.lines()) == 6
    assert [line.text.rsplit(" - ", 1)[-1] for line in logs.lines("mlp", last=1)] == [
        "java.lang.IllegalStateException: boom"
    ]


def test_underscores_in_names_do_not_mix_models(logs):
    write(logs.log_dir, "model_log.log", [worker("a_b_1.0", "I am a_b 1.0"), worker("a_2.0", "I am a 2.0")])
    assert [line.text[-10:] for line in logs.lines("a")] == ["I am a 2.0"]
    assert len(logs.lines("a_b")) == 1
    assert len(logs.lines("a", versions=["b_1.0"])) == 2  # a's version b_1.0, when a has one
    assert len(logs.lines("a_b", "1.0")) == 1 and logs.lines("a", "1.0") == []


def test_keys_never_show(tmp_path, logs):
    key_file = tmp_path / "key_file.json"
    secret = "Zq3xY8vK"
    key_file.write_text(json.dumps({"management": {"key": secret}, "inference": {"key": "iNfErEnCe"}, "API": {}}))
    write(
        logs.log_dir,
        "model_log.log",
        [
            worker("m_1.0", f"got key {secret} and iNfErEnCe"),
            worker("m_1.0", "headers: Authorization: Bearer abcdefgh12345678"),
            worker("m_1.0", 'config {"key": "0123456789abcdef", "token": "fedcba9876543210"}'),
        ],
    )
    shown = "\n".join(line.text for line in ServerLogs(logs.log_dir, key_file=key_file).lines("m"))
    for leaked in (secret, "iNfErEnCe", "abcdefgh12345678", "0123456789abcdef", "fedcba9876543210"):
        assert leaked not in shown
    assert shown.count(MASK) == 5


def test_follow_sees_new_lines_and_a_rolled_over_file(logs):
    path = logs.log_dir / "model_log.log"
    write(logs.log_dir, "model_log.log", [worker("m_1.0", "old line")])
    feed = logs.follow("m", poll=0.01, stop=10)
    write(logs.log_dir, "model_log.log", [worker("m_1.0", "new line")])
    line = next(feed)
    assert line.text.endswith("new line") and line.number == 2
    with open(path, "a") as f:
        f.write(worker("m_1.0", "half a li"))  # not whole yet: read once it is
    write(logs.log_dir, "model_log.log", ["ne"])
    line = next(feed)
    assert line.text.endswith("half a line") and line.number == 3  # line numbers hold across polls
    path.write_text(worker("m_1.0", "after rollover") + "\n")  # shorter: log4j2 started a new file
    line = next(feed)
    assert line.text.endswith("after rollover") and line.number == 1


def test_a_server_error_carries_the_cause_in_its_one_line(logs):
    write(logs.log_dir, "model_log.log", [worker("tv_1.0", t) for t in IMPORT_FAILURE])
    body = json.dumps({"code": 500, "type": "InternalServerException", "message": "Failed to start workers"})
    exc = error_from_response(500, body, "http://127.0.0.1:8081/models")
    assert isinstance(exc, ServerError) and exc.cause is None
    explained = exc.with_cause(logs.cause("tv", "1.0"))
    assert type(explained) is type(exc) and explained.status == 500
    text = str(explained)
    assert "\n" not in text
    assert "the worker failed with ModuleNotFoundError: No module named 'torchvision'" in text
    assert "model_log.log, line 7" in text
    assert exc.with_cause(None) is exc


def test_the_workers_own_dying_traceback_does_not_hide_the_handlers(logs):
    # a handler's initialize fails; then the worker dies with a traceback of TorchServe's own code
    write(
        logs.log_dir,
        "model_log.log",
        [
            worker("m_1.0", t)
            for t in [
                "Failed to load model m, exception weights missing",
                "Traceback (most recent call last):",
                '  File "/venv/lib/python3.11/site-packages/ts/model_loader.py", line 143, in load',
                "    initialize_fn(service.context)",
                '  File "/tmp/models/abc/my_handler.py", line 9, in initialize',
                '    raise FileNotFoundError("weights missing")',
                "FileNotFoundError: weights missing",
                "Backend worker process died.",
                "Traceback (most recent call last):",
                '  File "/venv/site-packages/ts/model_service_worker.py", line 201, in handle_connection',
                '    raise RuntimeError("{} - {}".format(code, result))',
                "RuntimeError: 500 - Unknown exception",
            ]
        ],
    )
    cause = logs.cause("m", "1.0")
    assert cause is not None and cause.line == "FileNotFoundError: weights missing" and cause.number == 7
    # alone, TorchServe's own traceback is still better than nothing
    own = [
        "Traceback (most recent call last):",
        '  File "/venv/ts/model_service_worker.py", line 201, in x',
        "OSError: 9",
    ]
    write(logs.log_dir, "model_log.log", [worker("n_1.0", t) for t in own])
    cause = logs.cause("n", "1.0")
    assert cause is not None and cause.line == "OSError: 9"
