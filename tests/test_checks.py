"""The answer checks (app/pipeline/checks.py, verify.py): each engine answer compared with the
turns it was sent, through the real pipeline against the fake engine's answer faults."""
from collections import Counter
from pathlib import Path

import pytest

from app.pipeline import checks
from app.pipeline.transcript import Turn
from tests.fake_engine import FakeEngine, last_section_turns, picked
from tests.test_summarize import load_turns, make_flavor, run

DATA = Path(__file__).parent / "data"
FR_MEDIUM = DATA / "fr" / "fr_medium_an_qag_2013-02-12.txt"
CRA_TEMPLATE = ("Compte rendu analytique : une ligne « Orateur : résumé » par intervention.\n\n"
                "Ce qui précède :\n{}\n\nNouvelles interventions :\n{}\n\nCompte rendu :")
SUMMARY_TEMPLATE = "Résume cet extrait ; lignes « Décision : » pour les décisions.\n\nExtrait :\n{}\n\nRésumé :"
WORDS = 6          # the fake echoes each turn's first six words: enough to recognise it


def turns_of(*pairs: tuple[str, str]) -> list[Turn]:
    return [Turn(speaker, text) for speaker, text in pairs]


# --- alignment, on its own ---------------------------------------------------------------

SITTING = turns_of(
    ("M. le président", "La parole est à Mme Martine Dupont pour le groupe écologiste."),
    ("Mme Martine Dupont", "Ma question porte sur les transports ferroviaires dans les régions rurales."),
    ("Julien Aubert", "Très bien !"),
    ("Mme Martine Dupont", "Les lignes secondaires ferment les unes après les autres depuis dix ans."),
    ("M. le ministre", "Le gouvernement investira dans les lignes secondaires dès cette année."),
)
KNOWN = [checks.speaker_key(t.speaker) for t in SITTING]


def test_an_answer_in_another_order_is_put_back_in_transcript_order():
    items = checks.interventions(0, SITTING)
    answer = ["Le ministre : le gouvernement investira dans les lignes secondaires.",
              "Mme Dupont : elle constate que les lignes secondaires ferment depuis dix ans.",
              "Mme Dupont : elle interroge sur les transports ferroviaires dans les régions rurales.",
              "M. le président : il donne la parole à Mme Dupont."]
    alignment = checks.align(answer, items, KNOWN)
    assert checks.in_order(alignment) == [answer[3], answer[2], answer[1], answer[0]]
    # "Très bien !" has no line: a brief interruption, which the template lets the model leave out
    assert [item.speaker for item in alignment.missing] == ["Julien Aubert"]
    assert alignment.missing[0].brief and not alignment.invented


def test_merged_turns_leave_the_second_missing_and_an_unknown_speaker_is_invented():
    items = checks.interventions(0, SITTING)
    answer = ["M. le président : il donne la parole à Mme Dupont. Mme Dupont interroge sur les transports "
              "ferroviaires dans les régions rurales.",
              "Jean-Baptiste Inventé : il approuve.",
              "Martine Dupont : les lignes secondaires ferment depuis dix ans.",
              "M. le ministre : le gouvernement investira dans les lignes secondaires."]
    alignment = checks.align(answer, items, KNOWN)
    assert [(item.first, item.speaker) for item in alignment.missing] == [(1, "Mme Martine Dupont"),
                                                                        (2, "Julien Aubert")]
    assert [line.label for line in alignment.invented] == ["Jean-Baptiste Inventé"]
    assert "Jean-Baptiste" not in " ".join(checks.in_order(alignment))


def test_consecutive_turns_of_one_speaker_are_one_intervention():
    turns = turns_of(("A B", "un deux trois quatre"), ("A B", "cinq six sept huit"), ("C D", "neuf dix onze"))
    items = checks.interventions(10, turns)
    assert [(item.first, len(item.turns)) for item in items] == [(10, 2), (12, 1)]
    assert items[0].label() == "turn 11 (A B)"


@pytest.mark.parametrize("label, person", [
    ("Jean-Baptiste Inventé", True), ("M. Durand", True), ("Charles de Gaulle", True),
    ("Décision", False), ("Points clés", False), ("Article 12 Bis", False), ("Durand", False)])
def test_which_labels_of_a_summary_are_people(label, person):
    assert checks.looks_like_a_person(label) is person


# --- through the pipeline -----------------------------------------------------------------

def cra(fake: FakeEngine, turns, **options):
    """A per-turn job (output "turns") whose turns are never cut into virtual turns."""
    flavor = make_flavor(create_new_turn_after=2000, max_new_turns=12, total_context_length=8192,
                         max_generation_length=1024)
    return run(fake, turns, fields=2, flavor=flavor, template=CRA_TEMPLATE, output="turns", **options)


def echo(turn: Turn) -> str:
    return f"{turn.speaker} : {' '.join(turn.text.split()[:WORDS])}"


def sitting() -> list[Turn]:
    """120 interventions of an Assemblée nationale sitting: consecutive turns of one speaker are
    one intervention (one line in the report), so they are joined here and the tests count turns."""
    turns: list[Turn] = []
    for turn in load_turns(FR_MEDIUM):
        if turns and turns[-1].speaker == turn.speaker:
            turns[-1] = Turn(turn.speaker, f"{turns[-1].text} {turn.text}")
        else:
            turns.append(turn)
    assert len(turns) >= 120
    return turns[:120]


def test_turns_left_out_once_are_asked_again_and_put_in_their_place():
    turns = sitting()
    skipped = [t for t in turns if picked(t.speaker, t.text, 7) and len(t.text.split()) > checks.BRIEF_WORDS]
    assert len(skipped) >= 8
    with FakeEngine(words_per_line=WORDS, answers={"skip_once_every": 7}) as fake:
        result = cra(fake, turns)
        sent_turns_by_call = [last_section_turns(r["prompt"]) for r in fake.chat_requests()]
    brief = [t for t in turns if len(t.text.split()) <= checks.BRIEF_WORDS and picked(t.speaker, t.text, 7)]
    assert result.text.splitlines() == [echo(t) for t in turns if t not in brief]
    assert result.checks == {"turns": 120, "turnsInReport": 120 - len(brief), "askedAgain": len(skipped),
                             "missing": 0, "briefOmitted": len(brief), "inventedSpeakers": 0,
                             "unsupportedFigures": 0, "unsupportedNames": 0}
    # Each answer that left turns out is followed by one call for exactly those turns.
    asked = [sent for sent in sent_turns_by_call if set(sent) <= {(t.speaker, t.text) for t in skipped}]
    assert sorted(turn for sent in asked for turn in sent) == sorted((t.speaker, t.text) for t in skipped)
    assert result.usage["calls"] == len(sent_turns_by_call)
    assert not [w for w in result.warnings if w.startswith("check:")]


def test_turns_always_left_out_are_reported_missing_by_turn_and_speaker():
    turns = sitting()
    with FakeEngine(words_per_line=WORDS, answers={"skip_always_every": 7}) as fake:
        result = cra(fake, turns)
    lost = [i for i, t in enumerate(turns) if picked(t.speaker, t.text, 7) and len(t.text.split()) > checks.BRIEF_WORDS]
    assert result.checks["missing"] == result.checks["askedAgain"] == len(lost)
    for i in lost:
        assert any(w.startswith(f"check: turn {i + 1} ({turns[i].speaker}) has no line") for w in result.warnings)
    assert result.checks["turnsInReport"] + result.checks["missing"] + result.checks["briefOmitted"] == 120


def test_findings_past_the_worded_limit_are_counted_the_same_after_a_resume():
    """One turn in two always left out: more findings than MAX_WARNINGS. A job stopped once the
    limit is passed and resumed from its checkpoint words the same warnings as one run in one go,
    and its closing sentence counts the findings left unworded before the stop too."""
    import json

    from app.pipeline.summarize import JobInterrupted

    turns = sitting()
    with FakeEngine(words_per_line=WORDS, answers={"skip_always_every": 2}) as fake:
        whole = cra(fake, turns)
        saved = []

        def past_the_limit() -> bool:
            return bool(saved) and saved[-1].get("findingsUnworded", 0) > 0
        with pytest.raises(JobInterrupted):
            cra(fake, turns, on_checkpoint=lambda progress, state: saved.append(json.loads(json.dumps(state))),
                should_stop=past_the_limit)
        resumed = cra(fake, turns, checkpoint=saved[-1])
    findings = [w for w in whole.warnings if w.startswith("check:")]
    assert whole.checks["missing"] > checks.MAX_WARNINGS
    assert len(findings) == checks.MAX_WARNINGS + 1 and "more findings" in findings[-1]
    assert saved[-1]["done"] < len(turns)                     # stopped before the end
    assert resumed.warnings == whole.warnings and resumed.checks == whole.checks


def test_merged_and_reordered_answers_end_with_every_turn_in_order():
    """An engine that merges a turn into the one before it (always) and answers in reverse order:
    the merged turns are asked again together, batch by batch; in that second answer the engine
    merges again all but the first of them, which stay missing and are named."""
    turns = sitting()
    merged = {(t.speaker, t.text) for t in turns if picked(t.speaker, t.text, 5)}
    with FakeEngine(words_per_line=WORDS, answers={"merge_every": 5, "reverse": True}) as fake:
        result = cra(fake, turns)
        sent = [last_section_turns(r["prompt"]) for r in fake.chat_requests()]
    asked = [s for s in sent if set(s) <= merged]
    lost = {turn for s in asked for turn in s[1:]}
    assert asked and result.checks["askedAgain"] == sum(map(len, asked))
    assert result.checks["missing"] == len(lost)
    kept = [t for t in turns if (t.speaker, t.text) not in lost and len(t.text.split()) > checks.BRIEF_WORDS]
    assert in_order_within(result.text, [echo(t) for t in kept])


def in_order_within(text: str, lines: list[str]) -> bool:
    """Whether each line is in `text` after the one before it (look-alike lines are each found)."""
    at = 0
    for line in lines:
        at = text.find(line, at)
        if at < 0:
            return False
        at += len(line)
    return True


def test_invented_speakers_and_figures_are_named_and_the_speakers_left_out():
    turns = sitting()[:40]
    with FakeEngine(words_per_line=WORDS, answers={"invent_speaker": "Jean-Baptiste Inventé",
                                                   "invent_figure": "soit 48 173 emplois"}) as fake:
        result = cra(fake, turns)
        answers = sum(r["finish_reason"] == "stop" for r in fake.chat_requests())
    assert "Jean-Baptiste" not in result.text and "48 173" in result.text
    assert result.checks["inventedSpeakers"] == answers
    assert result.checks["unsupportedFigures"] == answers
    warnings = [w for w in result.warnings if w.startswith("check:")]
    assert sum("gives Jean-Baptiste Inventé as speaker" in w for w in warnings) == answers
    assert sum("the figure 48 173" in w for w in warnings) == answers


def test_a_summary_keeps_its_lines_but_names_what_the_transcript_does_not_hold():
    turns = sitting()[:20]
    with FakeEngine(words_per_line=WORDS, answers={"invent_speaker": "Jean-Baptiste Inventé",
                                                   "invent_figure": "soit 48 173 emplois"}) as fake:
        result = run(fake, turns, fields=1, template=SUMMARY_TEMPLATE)
        # answers cut at maxGenerationLength are not kept (their batch is halved): not checked
        answers = sum(r["finish_reason"] == "stop" for r in fake.chat_requests())
    assert result.text.count("Jean-Baptiste Inventé :") == answers      # kept: a summary is free text
    assert result.checks["inventedSpeakers"] == answers
    figures = [w for w in result.warnings if w.startswith("check: the figure")]
    assert sum(w.startswith("check: the figure 48 173 ") for w in figures) == answers
    # The fake's invented line ends with words of the batch's first turn: a number cut in two there
    # ("60 000" -> "000") is a figure of its own, which no turn holds.
    assert all("48 173" in w or "Jean-Baptiste Inventé :" in w for w in figures)
    assert result.checks["unsupportedFigures"] == len(figures)
    assert result.checks["turns"] == 0          # no turn-by-turn alignment for a summary


def test_a_name_no_turn_holds_is_named_with_its_line():
    turns = sitting()[:20]
    with FakeEngine(words_per_line=WORDS, answers={"invent_figure": "selon Mme Josiane Inventée"}) as fake:
        result = cra(fake, turns)
        answers = sum(r["finish_reason"] == "stop" for r in fake.chat_requests())
    named = [w for w in result.warnings if w.startswith("check: the name Josiane Inventée in the line «")]
    assert len(named) == result.checks["unsupportedNames"] == answers
    assert result.checks["unsupportedFigures"] == 0 and result.checks["missing"] == 0


# --- through the gateway: GET /results, and a kill -9 in the middle of an asked-again batch --

def test_kill_9_while_a_batch_is_asked_again_resumes_with_every_turn(tmp_path, services, deployment):
    """The shipped `cra` (output "turns") on 60 turns, an engine that leaves out one turn in three
    the first time it sees it and takes 0.3 s a call: the gateway is killed (kill -9, every process)
    while an asked-again call is in flight, started again on the same store, and the report still
    has every turn once, in order; `checks` counts each turn once and none missing."""
    from tests.processes import FakeEngineProcess, Gateway, wait_until
    # 40 words at most: no turn is cut into virtual turns (createNewTurnAfter 150), one line each
    turns = [Turn(t.speaker, " ".join(t.text.split()[:40])) for t in sitting()[:60]]
    text = "\n".join(f"{t.speaker} : {t.text}" for t in turns)
    skipped = {(t.speaker, t.text) for t in turns if picked(t.speaker, t.text, 3)
               and len(t.text.split()) > checks.BRIEF_WORDS}
    engine = FakeEngineProcess("--delay", "0.3", "--words-per-line", str(WORDS), "--answers", '{"skip_once_every": 3}')
    try:
        gw = Gateway(tmp_path, engine.base_url, services_dir=str(services), deployment=deployment).start()
        job_id = gw.submit("cra", text=text, flavor="smollm2-135m")

        def asking_again() -> bool:
            return any(r["finished"] is None and set(map(tuple, last_section_turns(r["prompt"]))) <= skipped
                       for r in engine.chat_requests())
        wait_until(asking_again, 60, interval=0.05, what="an asked-again call in flight")
        gw.kill9()
        gw2 = Gateway(tmp_path, engine.base_url, services_dir=str(services), port=gw.port, db_path=gw.db_path,
                      deployment=deployment).start()
        try:
            result = gw2.wait_finished(job_id, timeout=120)
        finally:
            gw2.stop()
    finally:
        engine.stop()
    assert result["status"] == "complete", result
    # Brief turns ("Très bien !") the engine left out are not asked for; in the batches redone
    # after the kill the engine had seen them, and wrote them.
    brief = [t for t in turns if len(t.text.split()) <= checks.BRIEF_WORDS and picked(t.speaker, t.text, 3)]
    lines = result["summarization"].splitlines()
    found = result["checks"]
    assert found["turns"] == 60 and found["briefOmitted"] <= len(brief)
    assert found["missing"] == 0 and len(lines) == found["turnsInReport"] == 60 - found["briefOmitted"]
    assert not Counter(lines) - Counter(echo(t) for t in turns)           # no line twice, none made up
    assert in_order_within(result["summarization"], [echo(t) for t in turns if t not in brief])
    # Batches finished before the kill and saved count their asked-again turns; the batch redone
    # after it meets an engine that has seen its turns: nothing to ask again.
    assert 0 < found["askedAgain"] < len(skipped)
    print(f"kill -9 during an asked-again call ({deployment.name}): {found['askedAgain']} of "
          f"{len(skipped)} left-out turns counted as asked again, {result['usage']['calls']} calls")
