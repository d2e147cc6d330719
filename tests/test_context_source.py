"""contextSource "transcript": a fields 2 template's context is the turns before the batch, so the
batches don't wait for each other. Real loopback HTTP with the fake engine, in-process and (kill -9)
through a real gateway."""
import json

import pytest

from app.pipeline import chunking
from app.pipeline.checkpoint import partial_lines
from app.pipeline.summarize import JobInterrupted
from app.pipeline.transcript import Turn
from app.services.manifests import ManifestError, load_service
from tests.fake_engine import last_section_turns
from tests.processes import FakeEngineProcess, Gateway, wait_until
from tests.test_summarize import (EN_SMALL, FR_SMALL, WordTokenizer, assert_every_turn_sent_once_in_order,
                                  load_turns, make_flavor, run, sent_turns)

CONTEXT_HEAD, TURNS_HEAD = "End of the minutes so far:\n", "\n\nNew turns:\n"


def transcript_flavor(**overrides):
    return make_flavor(context_source="transcript", **overrides)


def context_of(prompt: str) -> str:
    """The first field of the test template as sent."""
    return prompt.split(CONTEXT_HEAD, 1)[1].split(TURNS_HEAD, 1)[0]


def by_first_turn(requests) -> list[dict]:
    """The requests in transcript order (they arrive in any order): by where their turns start."""
    return sorted(requests, key=lambda r: int(last_section_turns(r["prompt"])[0][1].split()[-1]))


def numbered(count: int) -> list[Turn]:
    return [Turn(f"Orateur {i % 3}", f"intervention numéro {i}") for i in range(count)]


def test_each_batch_gets_the_turns_before_it_and_the_report_keeps_transcript_order(fake_engine):
    turns = numbered(40)
    fake_engine.configure(delay=0.05)          # calls overlap, so they finish in any order
    result = run(fake_engine, turns, flavor=transcript_flavor(summary_turns=2), concurrency=8)
    requests = fake_engine.chat_requests()
    assert len(requests) == 10                 # maxNewTurns 4: every turn sent once
    assert 1 < fake_engine.max_seen_in_flight <= 8   # nobody waited for the previous answer; within the concurrency
    assert_every_turn_sent_once_in_order(turns, sent_turns(by_first_turn(requests)))
    for request in requests:
        first = int(last_section_turns(request["prompt"])[0][1].split()[-1])
        expected = [chunking.render_turn(t) for t in turns[max(0, first - 2):first]]
        assert context_of(request["prompt"]) == "\n".join(expected)
    assert [line.split(" : ", 1)[1] for line in result.text.splitlines()] == \
        [f"intervention numéro {i}" for i in range(40)]


@pytest.mark.parametrize("path", [FR_SMALL, EN_SMALL], ids=["fr", "en"])
def test_no_prompt_passes_the_context_and_every_turn_is_sent_once(fake_engine, path):
    """Long previous turns count like everything else: prompt + chat overhead + generation fit."""
    turns = load_turns(path)
    flavor = transcript_flavor(total_context_length=700, max_generation_length=200,
                               create_new_turn_after=60, summary_turns=3, max_new_turns=6)
    tokenizer = WordTokenizer()
    run(fake_engine, turns, flavor=flavor, tokenizer=tokenizer, concurrency=1)   # sent in transcript order
    requests = fake_engine.chat_requests()
    limit = flavor.total_context_length - flavor.max_generation_length - tokenizer.chat_overhead()
    assert all(tokenizer.count(r["prompt"]) <= limit for r in requests)
    assert sum(1 for r in requests if context_of(r["prompt"])) == len(requests) - 1   # all but the first
    assert_every_turn_sent_once_in_order(turns, sent_turns(requests))


def test_a_resumed_job_sends_only_the_unfinished_batches_with_the_same_prompts(fake_engine):
    turns = numbered(40)
    flavor = transcript_flavor()
    run(fake_engine, turns, flavor=flavor, concurrency=3)
    one_go = {r["prompt"] for r in fake_engine.chat_requests()}
    fake_engine.reset()
    saved = []
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, flavor=flavor, concurrency=3,
            on_checkpoint=lambda progress, state: saved.append(json.loads(json.dumps(state))),
            should_stop=lambda: len(saved) >= 4)
    first_run = [r["prompt"] for r in fake_engine.chat_requests()]
    finished = {int(k) for k in saved[-1]["outputs"]}
    assert saved[-1]["context"] == "transcript" and 4 <= len(finished) < 10
    fake_engine.reset()
    resumed = run(fake_engine, turns, flavor=flavor, concurrency=3, checkpoint=saved[-1])
    second_run = [r["prompt"] for r in fake_engine.chat_requests()]
    # Exactly the unfinished batches are sent again (a call the stopped run still had in flight
    # may reach the engine after the reset: it is one of them too), each with a full run's prompt.
    assert {int(last_section_turns(p)[0][1].split()[-1]) for p in second_run} == set(range(0, 40, 4)) - finished
    assert set(first_run) | set(second_run) == one_go
    assert [line.split(" : ", 1)[1] for line in resumed.text.splitlines()] == \
        [f"intervention numéro {i}" for i in range(40)]


def test_partial_lines_stop_at_the_first_unfinished_batch():
    state = {"context": "transcript", "outputs": {"0": {"turns": 4, "lines": ["a", "b"]},
                                                  "8": {"turns": 4, "lines": ["e"]},
                                                  "4": {"turns": 4, "lines": ["c", "d"]},
                                                  "16": {"turns": 4, "lines": ["g"]}}}
    assert partial_lines(state) == ["a", "b", "c", "d", "e"]


def test_a_checkpoint_of_the_other_context_source_is_not_resumed(fake_engine):
    turns = numbered(16)
    saved, messages = [], []
    run(fake_engine, turns, on_checkpoint=lambda progress, state: saved.append(json.loads(json.dumps(state))))
    fake_engine.reset()
    run(fake_engine, turns, flavor=transcript_flavor(), checkpoint=saved[1], on_message=messages.append)
    assert len(fake_engine.chat_requests()) == 4 and any("starting over" in m for m in messages)


def test_the_second_half_of_a_cut_batch_gets_the_turns_of_the_first_half(fake_engine):
    turns = numbered(8)
    fake_engine.add_fault("length", times=1)               # the first answer is cut: halve its batch
    run(fake_engine, turns, flavor=transcript_flavor(max_new_turns=8), concurrency=1)
    prompts = [r["prompt"] for r in fake_engine.chat_requests()]
    assert len(prompts) == 3
    assert context_of(prompts[2]) == "\n".join(chunking.render_turn(t) for t in turns[2:4])


def test_context_source_is_validated(tmp_path):
    def load(value):
        entry = {"name": "f", "modelName": "m", "totalContextLength": 4096, "maxGenerationLength": 512,
                 "createNewTurnAfter": 100, "summaryTurns": 2, "maxNewTurns": 4}
        if value is not None:
            entry["contextSource"] = value
        (tmp_path / "s.json").write_text(json.dumps({"name": "s", "fields": 2, "flavor": [entry]}))
        (tmp_path / "s.txt").write_text("Before:\n{}\n\nTurns:\n{}\n")
        return load_service(str(tmp_path / "s.json")).flavors[0]

    assert load(None).context_source == "summary" and load("transcript").context_source == "transcript"
    for bad in ("Transcript", "turns", 1):
        with pytest.raises(ManifestError, match="contextSource"):
            load(bad)
    assert load_service("services/cra.json").flavor("mixtral-fast").context_source == "transcript"


def test_kill_9_mid_transcript_context_job_resumes_without_resending_finished_batches(tmp_path, deployment):
    """Scaled, the kill takes the web node and the workers; a new worker takes the job over."""
    engine = FakeEngineProcess("--delay", "0.3")
    try:
        # Two calls in flight; every finished batch checkpointed at once (CHECKPOINT_INTERVAL 0: by
        # default a kill -9 may also re-send the batches finished in the last quarter second).
        env = {"ENGINE_CONCURRENCY": "2", "CHECKPOINT_INTERVAL": "0"}
        gw = Gateway(tmp_path, engine.base_url, env=env, deployment=deployment).start()
        text = "\n".join(f"Orateur {i % 4} : intervention numéro {i}" for i in range(84))  # 14 batches of 6
        job_id = gw.submit("cra", text=text, flavor="mixtral-fast")
        wait_until(lambda: gw.result(job_id).get("partial", "").count("\n") >= 5, 60, what="a partial report")
        partial = gw.result(job_id)["partial"].splitlines()
        assert [l.split(" : ", 1)[1] for l in partial] == [f"intervention numéro {i}" for i in range(len(partial))]
        gw.kill9()
        gw2 = Gateway(tmp_path, engine.base_url, port=gw.port, db_path=gw.db_path, env=env,
                      deployment=deployment).start()
        try:
            result = gw2.wait_finished(job_id, timeout=120)
        finally:
            gw2.stop()
        prompts = [r["prompt"] for r in engine.chat_requests()]
        print(f"calls: {len(prompts)}, batches: 14, sent twice: {len(prompts) - len(set(prompts))}")
        assert result["status"] == "complete"
        assert [l.split(" : ", 1)[1] for l in result["summarization"].splitlines()] == \
            [f"intervention numéro {i}" for i in range(84)]
        assert len(set(prompts)) == 14 and len(prompts) <= 14 + 2   # at most the 2 in flight at the kill
    finally:
        engine.stop()
