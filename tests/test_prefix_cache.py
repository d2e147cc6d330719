"""Prompts the engine can cache: what is the same in every prompt of a job comes first, and the
job's usage says how much of its prompts the engine took from its prefix cache.

The fake engine (prefix_cache=True) reports usage.prompt_tokens_details.cached_tokens as the
longest token prefix a prompt shares with the previous prompt it served, so every call after a
job's first must get at least the chat template's opening and the template's text before its
first "{}"; the share in usage must be the engine's numbers summed, and absent whenever one call
did not report them.
"""
import json

import pytest

from app.pipeline.summarize import JobInterrupted
from tests.fake_engine import chat_text, count_tokens
from tests.test_summarize import EN_SMALL, FR_SMALL, TEMPLATE_1, TEMPLATE_2, load_turns, run


def fixed_prefix_tokens(template: str) -> int:
    """Tokens every prompt of a job shares, as the fake counts them: the chat template's opening
    and the template's text before its first "{}"."""
    opening = chat_text([{"role": "user", "content": ""}]).split(" ", 2)[:2]
    return len(opening) + count_tokens(template.split("{}", 1)[0])


def answered(engine) -> list[dict]:
    return [r for r in engine.chat_requests() if r["status"] == 200]


@pytest.mark.parametrize("fields, template, path", [(2, TEMPLATE_2, FR_SMALL), (1, TEMPLATE_1, EN_SMALL)],
                         ids=["fields-2", "fields-1"])
def test_every_call_after_the_first_reuses_the_fixed_part_and_usage_carries_the_share(
        fake_engine, fields, template, path):
    fake_engine.configure(prefix_cache=True)
    result = run(fake_engine, load_turns(path), fields=fields)

    calls = answered(fake_engine)
    assert len(calls) > 2
    fixed = fixed_prefix_tokens(template)
    assert calls[0]["cached_tokens"] == 0
    assert all(call["cached_tokens"] >= fixed for call in calls[1:]), \
        ([call["cached_tokens"] for call in calls], fixed)
    usage = result.usage
    assert usage["cached_prompt_tokens"] == sum(call["cached_tokens"] for call in calls)
    assert usage["cached_share"] == round(usage["cached_prompt_tokens"] / usage["prompt_tokens"], 4)
    assert 0 < usage["cached_share"] < 1


def test_an_engine_that_does_not_report_its_cache_leaves_no_cached_keys(fake_engine):
    result = run(fake_engine, load_turns(FR_SMALL))
    assert result.usage["calls"] > 1
    assert not {"cached_prompt_tokens", "cached_share"} & set(result.usage)


def test_a_share_is_only_reported_when_every_call_reported_it(fake_engine):
    """An engine that stops saying (restarted without the flag, a fallback of another kind) makes
    the share unknown, not smaller: the keys are left out."""
    fake_engine.configure(prefix_cache=True)
    result = run(fake_engine, load_turns(FR_SMALL),
                 on_checkpoint=lambda progress, state: fake_engine.configure(prefix_cache=False))
    calls = answered(fake_engine)
    assert calls[0]["cached_tokens"] is not None and calls[-1]["cached_tokens"] is None
    assert not {"cached_prompt_tokens", "cached_share"} & set(result.usage)


@pytest.mark.parametrize("cache_before", [True, False], ids=["reported-before", "unreported-before"])
def test_a_resumed_job_adds_the_cached_tokens_of_its_checkpoint(fake_engine, cache_before):
    turns = load_turns(EN_SMALL)
    saved = []
    fake_engine.configure(prefix_cache=cache_before)
    with pytest.raises(JobInterrupted):
        run(fake_engine, turns, on_checkpoint=lambda progress, state: saved.append(json.loads(json.dumps(state))),
            should_stop=lambda: len(saved) >= 2)
    before = saved[-1]["usage"]
    assert ("cached_prompt_tokens" in before) is cache_before

    fake_engine.configure(prefix_cache=True)
    resumed = run(fake_engine, turns, checkpoint=saved[-1]).usage
    if cache_before:
        now = [call["cached_tokens"] for call in answered(fake_engine)]
        assert resumed["cached_prompt_tokens"] == sum(now)
        assert resumed["cached_share"] == round(sum(now) / resumed["prompt_tokens"], 4)
    else:       # the calls before the checkpoint said nothing: the whole job's share is unknown
        assert "cached_prompt_tokens" not in resumed and "cached_share" not in resumed
