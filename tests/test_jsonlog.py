"""Log lines are JSON and carry the request's context."""

import io
import json
import logging

from daveloper.jsonlog import configure_logging
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
