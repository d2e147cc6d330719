"""The summarize pipeline against a real loopback fake engine, on real transcripts."""
import json
from pathlib import Path

import pytest

from app.pipeline import chunking
from app.pipeline.engine import PermanentEngineError, RetryPolicy, TransientEngineError, get_engine
from app.services.manifests import Flavor
from app.pipeline.summarize import Hooks, JobInterrupted, SummaryRequest, clean_output, consolidate, summarize
from app.pipeline.tokenizers import RemoteTokenizer, Tokenizer
from app.pipeline.transcript import Turn
from tests.fake_engine import FakeEngine, echo_reply, last_section_turns

DATA = Path(__file__).parent / "data"
FR_SMALL = DATA / "fr" / "fr_small_an_qag_securite_alimentaire_2013-02-12.txt"
EN_SMALL = DATA / "en" / "en_small_ami_TS3010a.txt"

TEMPLATE_2 = ("Write the minutes.\n\nEnd of the minutes so far:\n{}\n\n"
              "New turns:\n{}\n\nMinutes of the new turns:")
TEMPLATE_1 = "Write the minutes of this excerpt.\n\nExcerpt:\n{}\n\nMinutes:"
REDUCE_TEMPLATE = "Condense these minutes.\n\nMinutes:\n{}\n\nCondensed:"


class WordTokenizer(Tokenizer):
    """Counts words, like the fake engine, so budgets and the engine agree."""

    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())

    def chat_overhead(self) -> int:
        return 4


def load_turns(path: Path) -> list[Turn]:
    """The test transcripts are one "Speaker : text" line per turn."""
    turns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        speaker, _, text = line.partition(" : ")
        if text.strip():
            turns.append(Turn(speaker.strip(), text.strip()))
    return turns


def make_flavor(**overrides) -> Flavor:
    values = dict(name="test", model="fake-model", total_context_length=2048,
                  max_generation_length=256, create_new_turn_after=60, summary_turns=2,
                  max_new_turns=4, temperature=0.1, top_p=0.8)
    values.update(overrides)
    return Flavor(**values)


def run(fake: FakeEngine, turns, *, fields=2, flavor=None, tokenizer=None, checkpoint=None,
        on_checkpoint=None, on_message=None, should_stop=None, **options):
    """summarize() with the test defaults: a fresh client, word tokens, no backoff sleep; the
    other keywords are the request's (template, concurrency, retry_policy, job_retries, ...)."""
    request = SummaryRequest(**{"template": TEMPLATE_2 if fields == 2 else TEMPLATE_1, "fields": fields,
                                "flavor": flavor or make_flavor(), "temperature": 0.3, "top_p": 0.9, **options})
    given = {"on_checkpoint": on_checkpoint, "on_message": on_message, "should_stop": should_stop}
    hooks = Hooks(**{name: hook for name, hook in given.items() if hook is not None}, sleep=lambda seconds: None)
    engine = get_engine(fake.base_url, "sk-secret-123", 30.0, 8)   # generous: CI machines are loaded
    return summarize(turns, request, engine=engine, tokenizer=tokenizer or WordTokenizer(), hooks=hooks,
                     checkpoint=checkpoint)


def ok_requests(engine: FakeEngine) -> list[dict]:
    """Chat requests answered normally (not failed, not cut)."""
    return [r for r in engine.chat_requests() if r["finish_reason"] == "stop"]


def sent_turns(requests) -> list[tuple[str, str]]:
    """(speaker, text) of the new turns of each request, in request order."""
    return [turn for r in requests for turn in last_section_turns(r["prompt"])]


def assert_every_turn_sent_once_in_order(turns, sent):
    """Virtual turns may split a turn, so compare the word stream and the speaker sequence."""
    assert " ".join(w for _, text in sent for w in text.split()) == \
        " ".join(w for t in turns for w in t.text.split())
    assert _squeeze(s for s, _ in sent) == _squeeze(t.speaker for t in turns)


def _squeeze(speakers) -> list[str]:
    out = []
    for speaker in speakers:
        if not out or out[-1] != speaker:
            out.append(speaker)
    return out


def expected_echo(sent, words=5) -> str:
    return "\n".join(f"{s} : {' '.join(t.split()[:words])}" for s, t in sent)


# --- fields == 2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", [FR_SMALL, EN_SMALL], ids=["fr", "en"])
def test_fields_2_sends_every_turn_once_in_order_with_its_speaker(fake_engine, path):
    turns = load_turns(path)
    result = run(fake_engine, turns)

    requests = fake_engine.chat_requests()
    assert all(r["status"] == 200 for r in requests)
    sent = sent_turns(requests)
    assert_every_turn_sent_once_in_order(turns, sent)
    assert result.text == expected_echo(sent)
    assert result.warnings == []
    assert result.usage["calls"] == len(requests) > 1
    assert result.usage["prompt_tokens"] > 0 and result.usage["completion_tokens"] > 0
    assert result.usage["retries"] == 0


def test_with_the_engine_own_tokenize_endpoint(fake_engine):
    turns = load_turns(FR_SMALL)
    tokenizer = RemoteTokenizer(fake_engine.url, "vllm", "fake-model")
    result = run(fake_engine, turns, tokenizer=tokenizer,
                 flavor=make_flavor(total_context_length=600, max_generation_length=150))
    assert tokenizer.chat_overhead() == 4
    sent = sent_turns(fake_engine.chat_requests())
    assert_every_turn_sent_once_in_order(turns, sent)
    assert result.text == expected_echo(sent) and result.warnings == []


def test_fields_2_prompt_is_the_template_with_the_last_summary_lines_then_the_new_turns(fake_engine):
    turns = load_turns(EN_SMALL)
    flavor = make_flavor(summary_turns=2)
    run(fake_engine, turns, flavor=flavor)

    summary_so_far: list[str] = []
    for request in fake_engine.chat_requests():
        new = last_section_turns(request["prompt"])
        context = "\n".join(summary_so_far[-2:])
        new_text = "\n".join(f"{s} : {t}" for s, t in new)
        assert request["prompt"] == chunking.fill_template(TEMPLATE_2, [context, new_text])
        assert (request["model"], request["temperature"], request["top_p"],
                request["max_tokens"]) == ("fake-model", 0.3, 0.9, flavor.max_generation_length)
        assert [m["role"] for m in request["messages"]] == ["user"]
        summary_so_far += echo_reply(request["prompt"], 5).splitlines()


def test_previous_summary_is_trimmed_from_the_start_to_the_reserve(fake_engine, monkeypatch):
    monkeypatch.setattr(chunking, "default_context_reserve", lambda flavor: 12)
    fake_engine.words_per_line = 40          # long summary lines: two of them exceed 12 words
    run(fake_engine, load_turns(EN_SMALL), flavor=make_flavor(summary_turns=3))

    summary_so_far: list[str] = []
    for request in fake_engine.chat_requests():
        context = request["prompt"].split("End of the minutes so far:\n", 1)[1].split("\n\nNew turns:")[0]
        assert len(context.split()) <= 12
        assert "\n".join(summary_so_far).endswith(context)
        summary_so_far += echo_reply(request["prompt"], 40).splitlines()


def test_progress_only_grows_stays_below_100_and_checkpoints_are_json(fake_engine):
    seen = []
    run(fake_engine, load_turns(EN_SMALL),
        on_checkpoint=lambda progress, state: seen.append((progress, json.dumps(state))))
    progresses = [p for p, _ in seen]
    assert progresses == sorted(progresses) and all(isinstance(p, int) for p in progresses)
    assert 0 < progresses[0] and progresses[-1] == 99
    assert len(seen) == len(fake_engine.chat_requests())


# --- fields == 1 ---------------------------------------------------------------------------

def test_fields_1_runs_batches_concurrently_and_keeps_the_order():
    turns = load_turns(EN_SMALL)
    flavor = make_flavor()
    batches = chunking.plan_batches(turns, TEMPLATE_1, 1, flavor, WordTokenizer(), 0)
    prompts = [chunking.fill_template(TEMPLATE_1, ["\n".join(map(chunking.render_turn, b.turns))])
               for b in batches]
    with FakeEngine(delay=0.05) as engine:
        result = run(engine, turns, fields=1, flavor=flavor, concurrency=4)
        assert engine.max_seen_in_flight > 1
        # Each planned batch sent exactly once (in any order), the output in transcript order.
        assert sorted(r["prompt"] for r in engine.chat_requests()) == sorted(prompts)
        assert_every_turn_sent_once_in_order(turns, sent_turns({"prompt": p} for p in prompts))
        assert result.text == "\n".join(echo_reply(p, 5) for p in prompts)


# --- answers cut, prompts too long ---------------------------------------------------------

def test_a_cut_answer_is_retried_in_smaller_batches(fake_engine):
    turns = load_turns(EN_SMALL)
    # Each turn's echo is <= 8 words; 4 turns' echo can exceed 20 tokens and gets cut.
    result = run(fake_engine, turns, flavor=make_flavor(max_generation_length=20, max_new_turns=4))

    cut = [r for r in fake_engine.chat_requests() if r not in ok_requests(fake_engine)]
    assert cut, "the test needs some batches whose answer is cut"
    sent = sent_turns(ok_requests(fake_engine))
    assert_every_turn_sent_once_in_order(turns, sent)
    assert result.text == expected_echo(sent)
    assert result.warnings == []


@pytest.mark.parametrize("fields", [2, 1])
def test_an_answer_cut_in_a_loop_is_trimmed_not_redone_in_halves(fake_engine, fields):
    """A model stuck repeating itself would loop again on smaller batches: one call per batch."""
    turns = load_turns(FR_SMALL)
    batches = len(chunking.plan_batches(turns, TEMPLATE_2 if fields == 2 else TEMPLATE_1, fields, make_flavor(),
                                        WordTokenizer(), chunking.default_context_reserve(make_flavor())
                                        if fields == 2 else 0))
    fake_engine.add_fault("loop", phrase="et ainsi de suite,")
    result = run(fake_engine, turns, fields=fields, concurrency=1)
    requests = fake_engine.chat_requests()
    assert len(requests) == batches and requests[0]["finish_reason"] == "length"
    first = last_section_turns(requests[0]["prompt"])[0]
    assert result.text.splitlines()[0] == f"{first[0]} : {' '.join(first[1].split()[:5])} et ainsi de suite,"
    assert len(result.warnings) == 1 and "turns 1-4 went into a loop" in result.warnings[0]
    assert_every_turn_sent_once_in_order(turns, sent_turns(requests))


def test_a_single_turn_still_cut_is_kept_with_a_warning(fake_engine):
    turns = [Turn("Alice", "one two three four five six"), Turn("Bob", "seven eight")]
    fake_engine.add_fault("length", words=3)
    result = run(fake_engine, turns, flavor=make_flavor(max_new_turns=1))
    assert result.text == "Alice : one\nBob : seven eight"
    assert len(result.warnings) == 1 and "turn 1 (Alice) was cut" in result.warnings[0]


def test_context_overflow_re_plans_the_batch_smaller(fake_engine):
    turns = load_turns(FR_SMALL)
    fake_engine.add_fault("context")
    result = run(fake_engine, turns)

    requests = fake_engine.chat_requests()
    assert requests[0]["status"] == 400
    first_batch = last_section_turns(requests[0]["prompt"])
    halves = [last_section_turns(r["prompt"]) for r in requests[1:3]]
    assert halves[0] + halves[1] == first_batch and all(halves)
    sent = sent_turns(requests[1:])
    assert_every_turn_sent_once_in_order(turns, sent)
    assert result.text == expected_echo(sent)


class SeamTokenizer(WordTokenizer):
    """Words, plus 3 tokens when a context sits right under its heading: the whole prompt costs
    more than the empty-context prompt and the context counted apart, as when BPE merges
    differently where two texts meet."""

    name = "seam"

    def count(self, text: str) -> int:
        return len(text.split()) + (3 if "far:\n" in text and "far:\n\n" not in text else 0)


def test_a_context_that_costs_more_in_the_prompt_than_alone_is_trimmed_to_fit(fake_engine, monkeypatch):
    # One full-size virtual turn per batch and a context filling its reserve: prompts the planner
    # puts at the limit. Without the whole-prompt count, one of them went 2 tokens past it.
    monkeypatch.setattr(chunking, "default_context_reserve", lambda flavor: 20)
    fake_engine.words_per_line = 200
    tokenizer = SeamTokenizer()
    flavor = make_flavor(total_context_length=300, max_generation_length=100, max_new_turns=1,
                         summary_turns=1, create_new_turn_after=0)
    turns = load_turns(FR_SMALL)
    run(fake_engine, turns, flavor=flavor, tokenizer=tokenizer)

    requests = fake_engine.chat_requests()
    excess = [tokenizer.count(r["prompt"]) + tokenizer.chat_overhead() + r["max_tokens"]
              - flavor.total_context_length for r in requests]
    assert max(excess) == 0, excess          # some prompt fills the context exactly, none passes it
    assert {r["status"] for r in requests} == {200}
    assert_every_turn_sent_once_in_order(turns, sent_turns(requests))


def test_a_real_context_limit_smaller_than_the_flavor_says_is_handled():
    turns = load_turns(EN_SMALL)
    # The flavor claims 2048 tokens; the engine only has 250: big batches overflow at first.
    with FakeEngine(max_model_len=250) as engine:
        result = run(engine, turns, flavor=make_flavor(max_new_turns=8, max_generation_length=100))
        assert any(r["status"] == 400 for r in engine.chat_requests())
        sent = sent_turns(ok_requests(engine))
        assert_every_turn_sent_once_in_order(turns, sent)
        assert result.text == expected_echo(sent)


# --- engine errors -------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [2, 1])
def test_transient_errors_are_retried_and_reported(fake_engine, fields):
    turns = load_turns(FR_SMALL)
    fake_engine.add_fault("503", times=2)
    messages = []
    # concurrency=1: the same batch fails twice; with fields=1 messages come from a worker.
    result = run(fake_engine, turns, fields=fields, on_message=messages.append,
                 retry_policy=RetryPolicy(max_retries=8), concurrency=1)

    assert result.usage["retries"] == 2
    assert messages == ["engine unavailable, retrying (1/8)", "engine unavailable, retrying (2/8)"]
    assert_every_turn_sent_once_in_order(turns, sent_turns(ok_requests(fake_engine)))


def test_a_tokenize_failure_while_building_a_prompt_is_retried_like_a_failed_call(fake_engine):
    """With fields == 2 a prompt's context is fitted with the engine's /tokenize: if the engine
    restarts between two batches, that count fails, and the job retries instead of failing."""
    class EngineRestarting(WordTokenizer):
        armed, failures = False, 0

        def count(self, text):
            if self.armed and self.failures < 1:
                self.failures += 1
                raise TransientEngineError("the engine's /tokenize did not answer (ConnectionError)")
            return super().count(text)

    tokenizer = EngineRestarting()
    turns = load_turns(FR_SMALL)
    checkpoints = []

    def on_checkpoint(progress, state):
        checkpoints.append(progress)
        tokenizer.armed = True             # after the first batch, the next prompt's context count fails

    result = run(fake_engine, turns, tokenizer=tokenizer, on_checkpoint=on_checkpoint,
                 retry_policy=RetryPolicy(max_retries=3))
    assert tokenizer.failures == 1 and result.usage["retries"] == 1
    assert_every_turn_sent_once_in_order(turns, sent_turns(ok_requests(fake_engine)))


@pytest.mark.parametrize("fields", [2, 1])
@pytest.mark.parametrize("content", ["", " \n "], ids=["empty", "blank"])
def test_an_empty_answer_is_retried_like_a_failed_call(fake_engine, fields, content):
    """Issue 15: a 200 "stop" answer without a word ended the job complete with the batch's turns
    missing. It is retried like a 503, and the turns are summarized when the engine answers."""
    turns = load_turns(FR_SMALL)
    fake_engine.add_fault("empty", content=content)
    messages = []
    result = run(fake_engine, turns, fields=fields, on_message=messages.append,
                 retry_policy=RetryPolicy(max_retries=3), concurrency=1)

    requests = fake_engine.chat_requests()
    assert requests[0]["fault"] == "empty" and requests[1]["prompt"] == requests[0]["prompt"]   # the same batch again
    answered = [r for r in requests if r["fault"] is None]
    sent = sent_turns(answered)
    assert_every_turn_sent_once_in_order(turns, sent)
    assert result.text == expected_echo(sent) and result.warnings == []
    assert result.usage["retries"] == 1 and result.usage["calls"] == len(answered)
    assert messages == ["the engine returned an empty answer, retrying (1/3)"]


@pytest.mark.parametrize("job_retries, tries, budget",
                         [(None, 3, ""), (1, 2, " (the job's retry budget of 1 is spent)")])
def test_an_answer_that_stays_empty_fails_the_job_naming_the_turns(fake_engine, job_retries, tries, budget):
    fake_engine.add_fault("empty", times=10)
    with pytest.raises(TransientEngineError) as caught:      # transient: a fallback flavor may answer
        run(fake_engine, load_turns(FR_SMALL), retry_policy=RetryPolicy(max_retries=2), job_retries=job_retries)
    assert str(caught.value) == f"the engine returned an empty answer for turns 1-4 after {tries} tries{budget}"
    assert len(fake_engine.chat_requests()) == tries
    assert caught.value.usage["calls"] == 0 and caught.value.usage["retries"] == tries - 1
    assert caught.value.usage["failed_calls"] == tries          # every call is counted somewhere


def test_a_permanent_error_fails_the_job_with_a_clear_message(fake_engine):
    fake_engine.add_fault("404")
    with pytest.raises(PermanentEngineError, match="does not know model 'fake-model'") as caught:
        run(fake_engine, load_turns(FR_SMALL))
    assert "sk-secret-123" not in str(caught.value)
    assert caught.value.usage["failed_calls"] == 1 and caught.value.usage["calls"] == 0


def test_a_cut_answer_names_where_the_engine_cut_it(fake_engine):
    """A single turn cut by the engine's own full context (fewer tokens than maxGenerationLength)
    is named with what the engine generated, not maxGenerationLength."""
    fake_engine.add_fault("length", times=1, words=7)
    result = run(fake_engine, [Turn("Alice", "une seule intervention assez longue pour être coupée")])
    assert any("cut at 7 tokens (the engine's context was full" in w for w in result.warnings), result.warnings


# --- checkpoints, stop, resume -------------------------------------------------------------

@pytest.mark.parametrize("fields", [2, 1])
def test_an_interrupted_job_resumes_without_resending_finished_batches(fake_engine, fields):
    turns = load_turns(EN_SMALL)
    saved = []
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, fields=fields, concurrency=1,
            on_checkpoint=lambda progress, state: saved.append((progress, json.loads(json.dumps(state)))),
            should_stop=lambda: len(saved) >= 3)
    assert len(saved) == 3 and len(fake_engine.chat_requests()) == 3
    first_run = fake_engine.chat_requests()

    fake_engine.reset()
    resumed = run(fake_engine, turns, fields=fields, checkpoint=saved[-1][1],
                  on_checkpoint=lambda progress, state: saved.append((progress, state)))
    second_run = fake_engine.chat_requests()
    assert not {r["prompt"] for r in first_run} & {r["prompt"] for r in second_run}
    assert saved[3][0] >= saved[2][0]                       # progress did not go back

    fake_engine.reset()
    one_go = run(fake_engine, turns, fields=fields)
    assert len(first_run) + len(second_run) == len(fake_engine.chat_requests())
    assert resumed.text == one_go.text
    assert resumed.usage["calls"] == one_go.usage["calls"]   # usage carried over


def test_a_stop_is_honoured_between_the_halves_of_a_cut_batch_and_the_job_resumes_there(fake_engine):
    """A batch whose answer is cut is redone in halves: the first half done is checkpointed, a stop
    asked meanwhile ends the run there, and the resumed run sends only what was not done."""
    turns = load_turns(FR_SMALL)
    fake_engine.add_fault("length")                    # the first batch's answer is cut: halved
    saved = []
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, on_checkpoint=lambda progress, state: saved.append((progress, state)),
            should_stop=lambda: bool(saved))
    first_run = fake_engine.chat_requests()
    assert [r["finish_reason"] for r in first_run] == ["length", "stop"]    # the second half never sent
    first_half = last_section_turns(first_run[1]["prompt"])
    assert first_half == last_section_turns(first_run[0]["prompt"])[:len(first_half)]
    progress, state = saved[-1]
    assert state["done"] == len(first_half) and progress > 0

    fake_engine.reset()
    resumed = run(fake_engine, turns, checkpoint=json.loads(json.dumps(state)))
    sent = sent_turns([first_run[1], *fake_engine.chat_requests()])
    assert_every_turn_sent_once_in_order(turns, sent)
    assert resumed.text == expected_echo(sent)


def test_should_stop_is_checked_before_the_first_batch(fake_engine):
    with pytest.raises(JobInterrupted):
        run(fake_engine, load_turns(FR_SMALL), should_stop=lambda: True)
    assert fake_engine.chat_requests() == []


def test_a_checkpoint_from_another_transcript_is_ignored(fake_engine):
    messages = []
    result = run(fake_engine, load_turns(FR_SMALL), on_message=messages.append,
                 checkpoint={"version": 2, "fields": 2, "total": 9999, "done": 5000, "lines": ["x"]})
    assert "starting over" in messages[0]
    assert not result.text.startswith("x")


def test_a_checkpoint_of_the_same_transcript_cut_by_another_flavor_is_not_resumed(fake_engine):
    """A fallback flavor (or an edited manifest) may cut the same turns into as many virtual turns,
    at other places: resuming at turn k of the other cut would skip text. It starts over instead."""
    sentence = "Un deux trois quatre cinq six sept huit neuf dix."
    turns = [Turn("Alice", " ".join([sentence] * 10)), Turn("Bob", "Merci.")]
    cut_at_60, cut_at_80 = make_flavor(create_new_turn_after=60, max_new_turns=1), \
        make_flavor(create_new_turn_after=80, max_new_turns=1)
    saved = []
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, flavor=cut_at_60, should_stop=lambda: bool(saved),
            on_checkpoint=lambda progress, state: saved.append(json.loads(json.dumps(state))))
    assert saved[-1]["done"] == 1 and saved[-1]["total"] == 3          # 60 + 40 words, then Bob

    fake_engine.reset()
    messages = []
    run(fake_engine, turns, flavor=cut_at_80, checkpoint=saved[-1], on_message=messages.append)
    assert any("starting over" in message for message in messages)
    sent = sent_turns(fake_engine.chat_requests())                     # 80 + 20 words, then Bob
    assert " ".join(text for speaker, text in sent if speaker == "Alice") == turns[0].text
    assert len(sent) == 3


# --- reduce and consolidate ----------------------------------------------------------------

def test_reduce_works_in_consecutive_groups_until_it_fits(fake_engine):
    turns = load_turns(EN_SMALL)
    flavor = make_flavor(total_context_length=400, max_generation_length=100,
                         reduce_summary=True)
    summary = run(fake_engine, turns, flavor=flavor.__class__(**{**flavor.__dict__,
                                                                 "reduce_summary": False})).text

    def reply(prompt: str) -> str:
        if prompt.startswith("Condense"):
            lines = prompt.split("Minutes:\n", 1)[1].split("\n\nCondensed:")[0].splitlines()
            return f"Part : {len(lines)} lines from {lines[0].split(' : ')[0]}"
        return echo_reply(prompt, 5)

    fake_engine.reset()
    fake_engine.reply = reply
    result = run(fake_engine, turns, flavor=flavor, reduce_template=REDUCE_TEMPLATE)

    reduce_prompts = [r["prompt"] for r in fake_engine.chat_requests()
                      if r["prompt"].startswith("Condense")]
    groups = [p.split("Minutes:\n", 1)[1].split("\n\nCondensed:")[0].splitlines()
              for p in reduce_prompts]
    first_pass = groups[:-1]
    assert len(first_pass) > 1
    assert [line for group in first_pass for line in group] == summary.splitlines()
    assert all(len("\n".join(g).split()) <= 400 - 100 for g in first_pass)
    assert groups[-1] == [f"Part : {len(g)} lines from {g[0].split(' : ')[0]}" for g in first_pass]
    assert result.text == f"Part : {len(first_pass)} lines from Part"


def test_consolidate_merges_consecutive_lines_of_a_speaker(fake_engine):
    turns = load_turns(EN_SMALL)
    result = run(fake_engine, turns, flavor=make_flavor(consolidate_summary=True))
    speakers = [line.split(" : ")[0] for line in result.text.splitlines()]
    assert all(a != b for a, b in zip(speakers, speakers[1:]))
    assert " :  : " not in result.text and " : : " not in result.text
    sent = sent_turns(fake_engine.chat_requests())
    assert result.text == "\n".join(consolidate(expected_echo(sent).splitlines()))


def test_consolidate_and_clean_output():
    assert consolidate(["Alice : a", "Alice : b", "Bob : c", "Alice : d", "12:30 start",
                        "12:30 end", "Alice :", "Alice : e"]) == \
        ["Alice : a b", "Bob : c", "Alice : d", "12:30 start", "12:30 end", "Alice : e"]
    assert clean_output("```markdown\nAlice : a\n\n  Bob : b  \n```\n") == ["Alice : a", "Bob : b"]
    assert clean_output("  \n") == []


def test_nothing_to_summarize_makes_no_call(fake_engine):
    result = run(fake_engine, [])
    assert result.text == "" and result.usage["calls"] == 0
    assert fake_engine.chat_requests() == []


def test_a_request_alone_runs_with_hooks_that_do_nothing(fake_engine):
    """The hooks are optional: no checkpoint kept, no message read, never asked to stop."""
    request = SummaryRequest(template=TEMPLATE_1, fields=1, flavor=make_flavor(), temperature=0.3, top_p=0.9)
    turns = [Turn("Alice", "bonjour à tous"), Turn("Bob", "merci")]
    result = summarize(turns, request, engine=get_engine(fake_engine.base_url, "sk-secret-123", 30.0, 8),
                       tokenizer=WordTokenizer())
    assert result.text == "Alice : bonjour à tous\nBob : merci" and result.usage["calls"] == 1



def test_echoed_template_lines_are_dropped(fake_engine):
    """Small models repeat their instructions; a line equal to a template line is not summary."""
    template = open("services/cra.txt", encoding="utf-8").read()
    instruction = "- Une ligne par intervention, de la forme « Orateur : résumé de l'intervention »."
    assert instruction in template.splitlines()
    assert clean_output(f"{instruction}\nAlice : bonjour\nNouvelles interventions à résumer :", template) \
        == ["Alice : bonjour"]
    # Seen from SmolLM2-135M: a template line with a letter changed, and one line repeated.
    mangled = "Ce qui précède (pour la continuité seulement ; ne le résumé pas de nouveau) :"
    assert mangled not in template and mangled.replace("résumé pas", "résume pas") in template
    assert clean_output(f"{mangled}\nAlice : bonjour\nAlice : bonjour\nBob : merci\nAlice : bonjour", template) \
        == ["Alice : bonjour", "Bob : merci", "Alice : bonjour"]
    assert clean_output("Alice : Tu rédiges le compte rendu analytique d'une réunion.", template) \
        == ["Alice : Tu rédiges le compte rendu analytique d'une réunion."]      # quoting part of a line is fine
    fake_engine.reply = lambda prompt: f"{instruction}\nAlice : a dit bonjour"
    result = run(fake_engine, [Turn("Alice", "bonjour à tous")], template=template)
    assert result.text == "Alice : a dit bonjour"


@pytest.mark.parametrize("fields", [2, 1])
def test_checkpoints_appended_to_a_store_give_back_every_whole_checkpoint(fake_engine, fields, tmp_path):
    """Issue 15: a checkpoint says what it adds to the previous one (Checkpoint.grows/kept) and the
    store appends only that. Through halves, a stop, a resume and a plan that changed (fresh
    state), what the store gives back is every time exactly the checkpoint handed to it."""
    from app.jobs.store import JobStore
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    store.init_schema()
    job_id = store.create_job(service="s", flavor="f", input_text="x")
    owner = store.claim_next().owner
    turns = load_turns(EN_SMALL)
    saved = []

    def on_checkpoint(progress, state):
        assert store.save_progress(job_id, progress, state, owner=owner, grows=state.grows, kept=state.kept)
        assert store.get(job_id).checkpoint == json.loads(json.dumps(state))
        saved.append(state.kept)

    fake_engine.add_fault("length")                      # the first batch is halved (fields 2: on_half)
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, fields=fields, concurrency=1, on_checkpoint=on_checkpoint,
            should_stop=lambda: len(saved) >= 3)
    resumed = run(fake_engine, turns, fields=fields, concurrency=1, on_checkpoint=on_checkpoint,
                  checkpoint=store.get(job_id).checkpoint)
    assert 0 < saved[3] and saved[3] == max(saved[:4])   # the resumed run appended to what was stored
    fake_engine.reset()
    assert resumed.text == run(fake_engine, turns, fields=fields).text
    # The same job cut otherwise (another flavor): its checkpoint starts over, written whole.
    count = len(saved)
    run(fake_engine, turns, fields=fields, flavor=make_flavor(create_new_turn_after=25), concurrency=1,
        on_checkpoint=on_checkpoint, checkpoint=store.get(job_id).checkpoint)
    assert saved[count] == 0
    store.close()
