"""Redaction of what leaves the process: the patterns, then the real openai SDK against local servers
speaking the OpenAI wire protocol, asserting what those servers received."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel

from daveloper.agent.llm.openai import OpenAIChatModel
from daveloper.agent.model import Message, ModelDone, ToolCallRequest
from daveloper.app import App
from daveloper.config import Settings
from daveloper.documents.embeddings import OpenAIEmbedder
from daveloper.redaction import OutboundRedactor
from generated.daveloper.v1 import AgentServiceStub, ChatRequest, SendMessage
from tests.agent.openai_server import FakeOpenAI, Script
from tests.documents.test_embeddings import EmbeddingsServer, endpoint  # noqa: F401  (a fixture)
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

EMAIL = "ada.lovelace@example.org"
CARD = "4111 1111 1111 1111"  # passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"  # does not
AWS = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
OPENAI = "sk-proj-" + "Zq8xW2vN5mK1pL7tR4yB9cF3"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx8a\n-----END RSA PRIVATE KEY-----"
RANDOM = "Qm9Xy7TzR2aVk8LpW3sN6dFh1JcB4gE0"  # 32 characters of high entropy
PASSWORD = "hunter2hunter2"
SECRETS = (AWS, GITHUB, OPENAI, JWT, PEM, RANDOM, PASSWORD)
ORDINARY = ("The flux capacitor engages at 88 mph.", "commit 3f2a9c1e5b7d4a6c8e0f2b4d6a8c0e2f4a6b8c0d",
            "see https://docs.example.org/guide/install.html", "id 123e4567-e89b-12d3-a456-426614174000",
            "def parse_config(path: str) -> dict:", "call 555-0100 ext 12")

TEXT = (f"Mail {EMAIL}, card {CARD}, not a card {NOT_A_CARD}. Keys: {AWS} {GITHUB} {OPENAI}\n"
        f"token {JWT}\n{PEM}\nrandom {RANDOM}\npassword = {PASSWORD}\n" + "\n".join(ORDINARY))


def test_pii_mode_takes_out_secrets_emails_and_card_numbers_and_leaves_ordinary_text() -> None:
    redacted = OutboundRedactor("pii").redact(TEXT)
    for value in (*SECRETS, EMAIL, CARD):
        assert value not in redacted.text, value
    for value in (NOT_A_CARD, *ORDINARY):
        assert value in redacted.text, value
    assert "password = [REDACTED:assigned_secret]" in redacted.text  # the name stays, for context
    assert redacted.counts["email"] == 1
    assert redacted.counts["card_number"] == 1
    assert redacted.counts["aws_key"] == redacted.counts["github_token"] == redacted.counts["private_key"] == 1
    assert redacted.total == 9  # one of each kind


def test_secrets_mode_keeps_emails_and_card_numbers_and_none_changes_nothing() -> None:
    secrets_only = OutboundRedactor("secrets").redact(TEXT)
    assert EMAIL in secrets_only.text
    assert CARD in secrets_only.text
    assert not any(value in secrets_only.text for value in SECRETS)
    untouched = OutboundRedactor("none").redact(TEXT)
    assert untouched.text == TEXT
    assert untouched.total == 0


def test_pseudonyms_are_keyed_stable_and_reveal_nothing() -> None:
    one, other = OutboundRedactor(key=b"key one"), OutboundRedactor(key=b"key two")
    assert one.pseudonym("ses_123") == one.pseudonym("ses_123") != one.pseudonym("ses_124")
    assert one.pseudonym("ses_123") != other.pseudonym("ses_123")
    assert "ses_123" not in one.pseudonym("ses_123")


def test_a_large_hostile_text_is_redacted_in_linear_time() -> None:
    # No pattern backtracks: long runs of what almost matches cost as much as their length.
    hostile = ("a" * 5000 + "@") * 40 + ("1 " * 20_000) + "eyJ" + "A" * 100_000 + ". " + "-----BEGIN " * 5000
    redacted = OutboundRedactor("pii").redact(hostile)
    assert redacted.text  # finished (the test's timeout is the bound)


async def test_the_chat_model_sends_redacted_messages_and_a_pseudonym_for_the_session() -> None:
    counted: dict[str, int] = {}
    redactor = OutboundRedactor("pii", key=b"signing key",
                                on_redacted=lambda kind, n: counted.__setitem__(kind, counted.get(kind, 0) + n))
    async with FakeOpenAI(api_key="sk-test") as server:
        server.enqueue(Script(text=["noted"]))
        model = OpenAIChatModel(base_url=server.url, api_key="sk-test", default_model="m", redactor=redactor)
        try:
            events = [e async for e in model.stream(
                [Message(role="system", content="You help."), Message(role="user", content=TEXT)],
                session_id="ses_secret_id")]
        finally:
            await model.aclose()
    sent = server.requests[0]
    wire = repr(sent)
    for value in (*SECRETS, EMAIL, CARD, "ses_secret_id"):
        assert value not in wire, value
    assert sent["user"] == redactor.pseudonym("ses_secret_id")
    done = events[-1]
    assert isinstance(done, ModelDone)
    assert done.redactions == 9 == sum(counted.values())


async def test_tool_call_arguments_and_tool_results_in_the_history_are_redacted_and_stay_json() -> None:
    card_digits = CARD.replace(" ", "")
    arguments = json.dumps({"query": f"mail of {EMAIL}", "card": int(card_digits), "keys": [AWS, "plain"],
                            "url": "https://docs.example.org/guide/install.html", "top_k": 5})
    history = [
        Message(role="system", content="You help."),
        Message(role="user", content="Find it."),
        Message(role="assistant", content=f"Looking up {EMAIL}.", tool_calls=(
            ToolCallRequest(call_id="call_1", name="search_documents", arguments=arguments),
            ToolCallRequest(call_id="call_2", name="scrape_url", arguments='{"url": "https://example.org/"}'),
            ToolCallRequest(call_id="call_3", name="search_documents", arguments=f"not json {GITHUB}"))),
        Message(role="tool", tool_call_id="call_1", name="search_documents", content=f"[1] token {JWT}"),
        Message(role="tool", tool_call_id="call_2", name="scrape_url", content="nothing"),
        Message(role="tool", tool_call_id="call_3", name="search_documents", content="nothing"),
    ]
    async with FakeOpenAI(api_key="sk-test") as server:
        server.enqueue(Script(text=["done"]))
        model = OpenAIChatModel(base_url=server.url, api_key="sk-test", default_model="m",
                                redactor=OutboundRedactor("pii"))
        try:
            events = [e async for e in model.stream(history)]
        finally:
            await model.aclose()
    wire = json.dumps(server.requests[0])  # as the endpoint received it, through the openai SDK
    for value in (EMAIL, card_digits, AWS, GITHUB, JWT):
        assert value not in wire, value
    calls = server.requests[0]["messages"][2]["tool_calls"]
    sent = json.loads(calls[0]["function"]["arguments"])  # still JSON, the ordinary values as they were
    assert sent == {"query": "mail of [REDACTED:email]", "card": "[REDACTED:card_number]",
                    "keys": ["[REDACTED:aws_key]", "plain"], "url": "https://docs.example.org/guide/install.html",
                    "top_k": 5}
    assert calls[1]["function"]["arguments"] == '{"url": "https://example.org/"}'  # nothing to take: untouched
    assert calls[2]["function"]["arguments"] == "not json [REDACTED:github_token]"
    done = events[-1]
    assert isinstance(done, ModelDone)
    assert done.redactions == 6  # e-mail twice, card, AWS key, GitHub token, JWT


async def test_the_embedder_sends_redacted_texts(endpoint: EmbeddingsServer) -> None:  # noqa: F811
    embedder = OpenAIEmbedder(model="test-embed", base_url=endpoint.url, api_key="sk-test", dense_size=8,
                              redactor=OutboundRedactor("pii"))
    try:
        await embedder.embed_documents([TEXT, "plain text"])
        await embedder.embed_query(f"who is {EMAIL}?")
    finally:
        await embedder.aclose()
    wire = repr(endpoint.requests)
    for value in (*SECRETS, EMAIL, CARD):
        assert value not in wire, value
    assert "plain text" in wire


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
def settings(settings: Settings, llm: FakeOpenAI) -> Settings:
    return settings.replace(llm_base_url=llm.url, llm_api_key="sk-test", llm_model="fake-model", redact="pii")


async def test_a_turn_reports_its_redactions_in_its_usage_and_metrics(
        app: App, channel: Channel, token: str, llm: FakeOpenAI) -> None:
    llm.enqueue(Script(text=["Thanks."]))
    before = app.metrics.registry.get_sample_value("daveloper_redactions_total", {"kind": "email"}) or 0.0
    requests = [ChatRequest(send=SendMessage(conversation_id="c", text=f"My mail is {EMAIL}, key {AWS}"))]
    events = [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]
    completed = next(e.turn_completed for e in events if e.turn_completed is not None)
    assert completed.usage.redactions == 2
    assert EMAIL not in repr(llm.requests)
    assert AWS not in repr(llm.requests)
    assert app.metrics.registry.get_sample_value("daveloper_redactions_total", {"kind": "email"}) == before + 1
