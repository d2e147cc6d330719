"""The engine client against a real loopback fake engine: calls, error mapping, retries."""
import logging
import threading

import pytest

from app.pipeline.engine import (Completion, ContextOverflowError, EngineClient, EngineError,
                        PermanentEngineError, RetryPolicy, TransientEngineError,
                        call_with_retries, get_engine)
from tests.fake_engine import FakeEngine

KEY = "sk-secret-123"
PROMPT = "Summarize.\n\nAlice : one two three four five six seven\nBob : yes"


def make_client(engine: FakeEngine, timeout: float = 5.0, **kwargs) -> EngineClient:
    return EngineClient(engine.base_url, KEY, timeout, **kwargs)


def complete(client: EngineClient, prompt: str = PROMPT, max_tokens: int = 100) -> Completion:
    return client.complete(model="m", prompt=prompt, temperature=0.1, top_p=0.8,
                           max_tokens=max_tokens)


def test_complete_sends_one_user_message_and_reads_the_answer(fake_engine):
    result = complete(make_client(fake_engine))

    assert result.text == "Alice : one two three four five\nBob : yes"
    assert result.finish_reason == "stop"
    assert result.prompt_tokens > 0 and result.completion_tokens == 10
    assert result.seconds >= 0
    [request] = fake_engine.chat_requests()
    assert request["messages"] == [{"role": "user", "content": PROMPT}]
    assert (request["model"], request["temperature"], request["top_p"],
            request["max_tokens"]) == ("m", 0.1, 0.8, 100)
    assert request["authorization"] == f"Bearer {KEY}"


def test_cached_tokens_are_read_from_prompt_tokens_details_and_none_when_absent(fake_engine):
    client = make_client(fake_engine)
    assert complete(client).cached_tokens is None       # vLLM without --enable-prompt-tokens-details
    fake_engine.configure(prefix_cache=True)
    first = complete(client)
    again = complete(client)
    assert first.cached_tokens == 0                      # said, and nothing reused: not None
    assert again.cached_tokens == again.prompt_tokens    # the same prompt twice: all of it shared
    assert complete(client, PROMPT.replace("Bob", "Carol")).cached_tokens < again.prompt_tokens


def test_a_cut_answer_is_returned_with_finish_reason_length(fake_engine):
    fake_engine.add_fault("length", words=3)
    result = complete(make_client(fake_engine))
    assert result.finish_reason == "length"
    assert result.text == "Alice : one"


# kind, options, expected type, words the message must contain
FAULTS = [
    ("drop", {}, TransientEngineError, "cannot connect"),
    ("429", {}, TransientEngineError, "429"),
    ("429", {"retry_after": 7}, TransientEngineError, "429"),
    ("500", {}, TransientEngineError, "HTTP 500"),
    ("502", {}, TransientEngineError, "HTTP 502"),
    ("503", {}, TransientEngineError, "HTTP 503"),
    ("504", {}, TransientEngineError, "HTTP 504"),
    ("malformed", {}, TransientEngineError, "malformed"),
    ("empty_choices", {}, TransientEngineError, "no completion choices"),
    ("404", {}, PermanentEngineError, "does not know model 'm'"),
    ("401", {}, PermanentEngineError, "rejected the API key"),
    ("context", {}, ContextOverflowError, "maximum context length"),
]


@pytest.mark.parametrize("kind, options, error_type, words", FAULTS,
                         ids=[f"{f[0]}{'+' if f[1] else ''}" for f in FAULTS])
def test_each_fault_becomes_our_error_type(fake_engine, caplog, kind, options, error_type, words):
    fake_engine.add_fault(kind, **options)
    with caplog.at_level(logging.DEBUG), pytest.raises(EngineError) as caught:
        complete(make_client(fake_engine))

    error = caught.value
    assert type(error) is error_type
    assert words in str(error)
    assert KEY not in str(error) and KEY not in caplog.text
    # No openai text chained: it may quote the engine verbatim.
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)


def test_retry_after_header_is_carried(fake_engine):
    fake_engine.add_fault("429", retry_after=7)
    fake_engine.add_fault("503", retry_after=2)
    client = make_client(fake_engine)
    for expected in (7.0, 2.0):
        with pytest.raises(TransientEngineError) as caught:
            complete(client)
        assert caught.value.retry_after == expected
        assert caught.value.status_code in (429, 503)


def test_a_hanging_engine_times_out_as_transient(fake_engine):
    fake_engine.add_fault("hang", seconds=5)
    with pytest.raises(TransientEngineError, match=r"did not answer within 0.3 s"):
        complete(make_client(fake_engine, timeout=0.3))


def test_no_engine_listening_is_transient_and_ping_is_false():
    engine = FakeEngine().start()
    engine.stop()                       # the port is now closed
    client = make_client(engine, timeout=1)
    assert client.ping() is False
    with pytest.raises(TransientEngineError, match="cannot connect"):
        complete(client)


def test_ping_is_true_when_the_engine_answers(fake_engine):
    assert make_client(fake_engine).ping() is True


def test_an_engine_echoing_the_key_is_redacted(fake_engine, caplog):
    fake_engine.add_fault("401", message=f"Incorrect API key provided: {KEY}")
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentEngineError) as caught:
        complete(make_client(fake_engine))
    assert "Incorrect API key provided: ***" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(make_client(fake_engine))


def test_retries_log_no_key(fake_engine, caplog):
    fake_engine.add_fault("503", message=f"backend {KEY} restarting", times=2)
    client = make_client(fake_engine)
    with caplog.at_level(logging.DEBUG):
        result = call_with_retries(lambda: complete(client), RetryPolicy(), sleep=lambda s: None)
    assert result.finish_reason == "stop"
    assert "retry 2/8" in caplog.text and KEY not in caplog.text


def test_max_concurrent_limits_requests_in_flight():
    with FakeEngine(delay=0.15) as engine:
        client = make_client(engine, max_concurrent=2)
        threads = [threading.Thread(target=complete, args=(client,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engine.max_seen_in_flight == 2
        assert len(engine.chat_requests()) == 6


# --- retries ---------------------------------------------------------------------------------

def test_call_with_retries_reports_each_retry_then_succeeds():
    outcomes = [TransientEngineError("down"), TransientEngineError("down", retry_after=3), "ok"]
    reports, sleeps = [], []

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=30.0)
    result = call_with_retries(flaky, policy, on_retry=lambda n, total, e: reports.append((n, total)),
                               sleep=sleeps.append)
    assert result == "ok"
    assert reports == [(1, 5), (2, 5)]
    assert 0.75 <= sleeps[0] <= 1.0 and sleeps[1] == 3     # backoff, then Retry-After


@pytest.mark.parametrize("error, policy, tries", [
    (TransientEngineError("down"), RetryPolicy(max_retries=3), 4),       # gives up after max_retries
    (PermanentEngineError("no such model"), RetryPolicy(), 1),            # never retried
], ids=["transient", "permanent"])
def test_call_with_retries_stops_when_it_must(error, policy, tries):
    calls = []

    def failing():
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        call_with_retries(failing, policy, sleep=lambda s: None)
    assert len(calls) == tries


def test_backoff_is_capped_exponential_with_jitter():
    policy = RetryPolicy(base_delay=1.0, max_delay=30.0)
    for attempt, nominal in enumerate([1, 2, 4, 8, 16, 30, 30, 30], start=1):
        for _ in range(50):
            assert nominal * 0.75 <= policy.delay(attempt) <= nominal
    assert policy.delay(1, retry_after=12) == 12
    assert policy.delay(1, retry_after=10_000) == 300


def test_the_default_policy_rides_out_a_60_second_restart():
    policy = RetryPolicy()
    for _ in range(50):
        assert sum(policy.delay(n) for n in range(1, policy.max_retries + 1)) >= 60


def test_retries_against_the_fake_engine_then_success(fake_engine):
    fake_engine.add_fault("503", times=2)
    fake_engine.add_fault("drop")
    reports = []
    result = call_with_retries(lambda: complete(make_client(fake_engine)), RetryPolicy(),
                               on_retry=lambda n, total, e: reports.append(n), sleep=lambda s: None)
    assert result.text.startswith("Alice : ")
    assert reports == [1, 2, 3]
    assert len(fake_engine.chat_requests()) == 4


# --- one client per engine -------------------------------------------------------------------

def test_get_engine_is_cached_per_process_and_thread_safe():
    found = []
    threads = [threading.Thread(target=lambda: found.append(
        get_engine("http://127.0.0.1:1/v1", KEY, 5.0, 4))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in found}) == 1
    assert get_engine("http://127.0.0.1:2/v1", KEY, 5.0, 4) is not found[0]


# --- the fake engine as a process --------------------------------------------------------------

def test_fake_engine_runs_as_a_process_controlled_over_http():
    import json
    import subprocess
    import sys
    import urllib.request

    process = subprocess.Popen([sys.executable, "-m", "tests.fake_engine", "--port", "0",
                                "--fault", "503"], stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().split()[-1]      # "... listening on URL"
        client = EngineClient(base_url, KEY, 5.0)
        with pytest.raises(TransientEngineError, match="HTTP 503"):
            complete(client)
        control = urllib.request.Request(base_url.removesuffix("/v1") + "/_control",
                                         data=json.dumps({"faults": ["404"]}).encode())
        urllib.request.urlopen(control).close()
        with pytest.raises(PermanentEngineError, match="HTTP 404"):
            complete(client)
        assert complete(client).finish_reason == "stop"
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_control") as answer:
            statuses = [r["status"] for r in json.load(answer)["requests"]]
        assert statuses == [503, 404, 200]
    finally:
        process.terminate()
        process.wait(timeout=5)
