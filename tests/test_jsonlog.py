"""Log lines are JSON and carry the request's context."""

import io
import json
import logging

from daveloper.jsonlog import configure_logging
from daveloper.logredaction import Redactor
from daveloper.rpc.context import request_id_var, session_id_var


def test_records_are_json_with_request_context_and_extras() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "inst-1", stream)
    try:
        token_r = request_id_var.set("req-9")
        token_s = session_id_var.set("sess-3")
        try:
            logging.getLogger("daveloper.test").info("hello %s", "world", extra={"job_id": "j1"})
            logging.getLogger("daveloper.test").debug("hidden")
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("daveloper.test").exception("failed")
        finally:
            request_id_var.reset(token_r)
            session_id_var.reset(token_s)
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["message"] == "hello world"
    assert (first["level"], first["logger"], first["instance"]) == ("INFO", "daveloper.test", "inst-1")
    assert (first["request_id"], first["session_id"], first["job_id"]) == ("req-9", "sess-3", "j1")
    assert first["time"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]


ADMIN = "admin-Secret-0123456789"
KEY = "sk-test-ABCDEFGHIJKLMNOP0123"


def test_secrets_are_redacted_in_messages_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "inst-1", stream, secrets=[ADMIN, KEY])
    log = logging.getLogger("grpclib.client")
    try:
        log.info("calling with %s", {"authorization": f"Bearer {ADMIN}"})
        log.info("key %s, token=%s", KEY, "v1.AbCdEfGhIjKlMnOpQrStUv.1767225600.AbCdEfGhIjKlMnOpQrStUvWxYz0123")
        log.warning("upstream said", extra={"detail": f"bad header {ADMIN!r}", "count": 3})
        try:
            # What grpclib raises for a token with a control character, and its repr() of the value.
            raise ValueError("Invalid metadata value: {!r}".format(f"Bearer {ADMIN}\x01"))
        except ValueError:
            log.exception("rpc failed")
        log.info("a format that fails %d", "not a number")
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 5
    for secret in (ADMIN, KEY, "AbCdEfGhIjKlMnOpQrStUvWxYz0123"):
        assert secret not in text
    assert "Bearer [REDACTED]" in lines[0]["message"]
    assert lines[2]["detail"] == "bad header '[REDACTED]'"
    assert lines[2]["count"] == 3
    assert "Invalid metadata value" in lines[3]["exception"]
    assert "[REDACTED]" in lines[3]["exception"]
    assert "could not be formatted" in lines[4]["message"]


def test_ordinary_ids_and_prose_are_left_alone() -> None:
    redactor = Redactor([ADMIN])
    for text in ("request 0f8fc1f6a9e34a8e9a1c0f2c6a3b1e2d of session Xq3_aB9cDeFgHiJkLmNoPq",
                 "missing bearer token: send 'authorization: Bearer <token>' from CreateSession",
                 "max_tokens=500 reason TOKEN_MISSING", "GET /page/1/3 200 in 12 ms"):
        assert redactor.redact(text) == text
