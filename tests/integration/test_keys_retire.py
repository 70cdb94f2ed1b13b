"""Retiring a model key on a real TorchServe: `keys rotate-model-key --retire OLD` is refused while the
running server has loaded an archive wrapped under OLD (its workers reopen the unpacked copy on every
start: a scale, a crash), and allowed once that version is redeployed from the rewrapped archive."""

from __future__ import annotations

import json

import pytest

from .test_encryption import Proj

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_retire_waits_for_the_redeploy_of_what_the_server_loaded(tmp_path, mlp_run):
    p = Proj(tmp_path)
    p.cli("package", "mlp", "--version", "1.0", "--checkpoint", str(mlp_run), "--encrypt")
    old = json.loads(p.keyring.read_text())["current"]
    p.cli("serve", "start")
    try:
        p.cli("deploy", "mlp", "--version", "1.0")
        answers = p.predict("mlp", "1.0")

        refused = p.cli("keys", "rotate-model-key", "--retire", old, expect=8)
        said = " ".join(refused.stderr.split())
        assert "still needed by the running local server" in said and "mlp 1.0" in said, said
        assert "torchship unregister mlp --version 1.0 && torchship deploy mlp --version 1.0" in said
        ring = json.loads(p.keyring.read_text())
        assert old in ring["keys"] and ring["current"] != old, "rotated, and the old key kept"

        # what the finding broke: a new worker reopens the folder unpacked from the old archive
        p.cli("scale", "mlp", "--version", "1.0", "--min", "2")
        assert p.predict("mlp", "1.0") == answers

        p.cli("unregister", "mlp", "--version", "1.0")
        p.cli("deploy", "mlp", "--version", "1.0")  # the rewrapped archive, unpacked afresh
        done = p.cli("keys", "rotate-model-key", "--retire", old)
        assert f"retired {old}" in done.stdout
        assert old not in json.loads(p.keyring.read_text())["keys"]
        p.cli("scale", "mlp", "--version", "1.0", "--min", "2")
        assert p.predict("mlp", "1.0") == answers
    finally:
        p.cli("serve", "stop")
