"""The fake engine's answer faults (`answers` in tests/fake_engine.py), through real HTTP on
loopback: each key's exact answer, the skip-once memory, `picked`, POST /_control and --answers."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.fake_engine import FakeEngine, picked
from tests.processes import FakeEngineProcess

# One batch of a per-turn service: turns 3 and 6 echo the same five words but are different turns.
TURNS = [
    ("Mme la présidente", "La séance est ouverte à quinze heures trente."),
    ("M. Dupont", "Madame la ministre, le chômage des jeunes reste trop élevé dans nos territoires."),
    ("Mme la ministre", "Monsieur le député, les chiffres que vous citez datent de l'an dernier."),
    ("M. Dupont", "Ils sont pourtant confirmés par l'Insee ce matin même."),
    ("Mme la présidente", "La parole est à Mme Martin pour le groupe écologiste."),
    ("Mme Martin", "Je veux revenir sur la sécurité alimentaire dans les cantines."),
    ("M. Dupont", "Ils sont pourtant confirmés par tous les syndicats."),
]
PROMPT = "Réduis chaque tour à l'essentiel.\n\n" + "\n".join(f"{speaker} : {text}" for speaker, text in TURNS)
ECHO = [     # the answer without faults: each turn's first five words
    "Mme la présidente : La séance est ouverte à",
    "M. Dupont : Madame la ministre, le chômage",
    "Mme la ministre : Monsieur le député, les chiffres",
    "M. Dupont : Ils sont pourtant confirmés par",
    "Mme la présidente : La parole est à Mme",
    "Mme Martin : Je veux revenir sur la",
    "M. Dupont : Ils sont pourtant confirmés par",
]
# The turns `picked` by N (crc32 of "speaker\x1ftext"): written out, so the tests below say exactly
# which lines each fault changes.
PICKED_BY_2 = [1, 2, 4, 5]
PICKED_BY_3 = [4, 6]
NAME, FIGURE = "Jean-Baptiste Inventé", "soit 48 173 emplois"


def ask(base_url: str, prompt: str = PROMPT) -> list[str]:
    """One chat completion, as the gateway's engine client sends it; the answer's lines."""
    response = requests.post(f"{base_url}/chat/completions", timeout=10, json={
        "model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 500})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"].splitlines()


def echo_without(*left_out: int) -> list[str]:
    return [line for index, line in enumerate(ECHO) if index not in left_out]


def notes(engine) -> list[list[str]]:
    """Each chat call's "answer_faults", in arrival order."""
    return [r["answer_faults"] for r in engine.chat_requests()]


# --- picked ------------------------------------------------------------------------------------

def test_picked_hits_the_turns_written_above_and_every_one_or_less_hits_all():
    assert [i for i, (speaker, text) in enumerate(TURNS) if picked(speaker, text, 2)] == PICKED_BY_2
    assert [i for i, (speaker, text) in enumerate(TURNS) if picked(speaker, text, 3)] == PICKED_BY_3
    assert all(picked(speaker, text, every) for speaker, text in TURNS for every in (1, 0, -4))
    # The whole turn decides, not the words echoed: turns 3 and 6 echo alike, only 6 is picked by 3.
    assert ECHO[3] == ECHO[6]


def test_picked_is_the_same_in_another_process_whatever_its_hash_seed():
    code = ("import json, sys; from tests.fake_engine import picked; "
            "print(json.dumps([picked(s, t, 3) for s, t in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TURNS)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": "4242"})
    assert json.loads(out.stdout) == [index in PICKED_BY_3 for index in range(len(TURNS))]


# --- each key ----------------------------------------------------------------------------------

def test_without_answers_the_echo_is_unchanged_and_nothing_is_noted():
    with FakeEngine() as engine:
        assert ask(engine.base_url) == ECHO
        assert notes(engine) == [[]]


def test_skip_always_leaves_the_picked_turns_out_of_every_answer():
    with FakeEngine(answers={"skip_always_every": 2}) as engine:
        assert ask(engine.base_url) == echo_without(*PICKED_BY_2)
        assert ask(engine.base_url) == echo_without(*PICKED_BY_2)
        assert notes(engine) == [["skip_always 1 M. Dupont", "skip_always 2 Mme la ministre",
                                  "skip_always 4 Mme la présidente", "skip_always 5 Mme Martin"]] * 2


def test_skip_once_leaves_a_picked_turn_out_the_first_time_only():
    with FakeEngine(answers={"skip_once_every": 3}) as engine:
        assert ask(engine.base_url) == echo_without(*PICKED_BY_3)
        assert ask(engine.base_url) == ECHO                     # the gateway asks again: answered
        # The memory is the turn's, whatever prompt carries it: a retry of turn 6 alone is answered.
        speaker, text = TURNS[6]
        assert ask(engine.base_url, f"Réduis ce tour.\n\n{speaker} : {text}") == [ECHO[6]]
        assert notes(engine) == [["skip_once 4 Mme la présidente", "skip_once 6 M. Dupont"], [], []]

        engine.reset()                                          # forgets the turns seen, keeps answers
        assert engine.answers == {"skip_once_every": 3}
        assert ask(engine.base_url) == echo_without(*PICKED_BY_3)


def test_skip_once_leaves_each_turn_out_once_when_calls_carry_it_at_the_same_time():
    with FakeEngine(answers={"skip_once_every": 3}, delay=0.05) as engine:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(ask(engine.base_url))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 8
        done = [note for call in notes(engine) for note in call]
        assert sorted(done) == ["skip_once 4 Mme la présidente", "skip_once 6 M. Dupont"]
        assert sum(len(lines) for lines in answers) == 8 * len(ECHO) - 2


def test_merge_adds_a_picked_turn_to_the_line_before_it():
    with FakeEngine(answers={"merge_every": 2}) as engine:
        assert ask(engine.base_url) == [
            "Mme la présidente : La séance est ouverte à Madame la ministre, le chômage "
            "Monsieur le député, les chiffres",
            "M. Dupont : Ils sont pourtant confirmés par La parole est à Mme Je veux revenir sur la",
            "M. Dupont : Ils sont pourtant confirmés par",
        ]
        assert notes(engine) == [["merge 1 M. Dupont", "merge 2 Mme la ministre", "merge 4 Mme la présidente",
                                  "merge 5 Mme Martin"]]


def test_merge_every_turn_leaves_the_first_turn_its_line():
    with FakeEngine(answers={"merge_every": 1}) as engine:
        assert ask(engine.base_url) == [" ".join([ECHO[0]] + [line.split(" : ")[1] for line in ECHO[1:]])]


def test_invent_speaker_and_figure_change_the_first_lines():
    with FakeEngine(answers={"invent_speaker": NAME, "invent_figure": FIGURE}) as engine:
        assert ask(engine.base_url) == [
            f"{ECHO[0]} {FIGURE}",
            f"{NAME} : ouverte à quinze heures trente.",     # words of the batch's first turn
            *ECHO[1:],
        ]
        assert notes(engine) == [["invent_figure", f"invent_speaker {NAME}"]]


def test_reverse_answers_in_the_other_order():
    with FakeEngine(answers={"reverse": True}) as engine:
        assert ask(engine.base_url) == ECHO[::-1]
        assert notes(engine) == [["reverse"]]


def test_keys_combine_skips_and_merges_first_then_reverse_then_inventions():
    answers = {"skip_always_every": 3, "merge_every": 2, "reverse": True,
               "invent_speaker": NAME, "invent_figure": FIGURE}
    with FakeEngine(answers=answers) as engine:
        # Turn 4 is left out, so turn 5 joins the line of turn 3: the line before it in the answer.
        assert ask(engine.base_url) == [
            f"M. Dupont : Ils sont pourtant confirmés par Je veux revenir sur la {FIGURE}",
            f"{NAME} : ouverte à quinze heures trente.",
            "Mme la présidente : La séance est ouverte à Madame la ministre, le chômage "
            "Monsieur le député, les chiffres",
        ]
        assert notes(engine) == [["merge 1 M. Dupont", "merge 2 Mme la ministre", "skip_always 4 Mme la présidente",
                                  "merge 5 Mme Martin", "skip_always 6 M. Dupont", "reverse",
                                  "invent_figure", f"invent_speaker {NAME}"]]


# --- with the rest of the fake -------------------------------------------------------------------

def test_answers_leave_a_custom_reply_alone_come_before_padding_and_queued_faults_still_apply():
    with FakeEngine(answers={"skip_always_every": 2, "reverse": True}) as engine:
        engine.configure(out_tokens=80)
        lines = ask(engine.base_url)
        assert lines[:-1] == echo_without(*PICKED_BY_2)[::-1]          # faults, then the padding
        assert set(lines[-1].split()) == {"etc."}

        engine.add_fault("503")
        response = requests.post(f"{engine.base_url}/chat/completions", timeout=10,
                                 json={"model": "m", "messages": [{"role": "user", "content": PROMPT}]})
        assert response.status_code == 503
        engine.configure(out_tokens=None)
        assert ask(engine.base_url) == echo_without(*PICKED_BY_2)[::-1]

        engine.reply = lambda prompt: "Mme la présidente : une réponse écrite"
        assert ask(engine.base_url) == ["Mme la présidente : une réponse écrite"]
        assert notes(engine)[-1] == []


def test_unknown_answer_keys_are_refused():
    with pytest.raises(ValueError, match="skip_every"):
        FakeEngine(answers={"skip_every": 2})
    engine = FakeEngine()
    with pytest.raises(ValueError, match="invent_name"):
        engine.configure(answers={"invent_name": NAME})
    assert engine.answers == {}


def test_answers_are_set_through_post_control_and_shown_by_get_control():
    with FakeEngine() as engine:
        control = f"{engine.url}/_control"
        assert requests.post(control, json={"answers": {"skip_once_every": 3}}, timeout=5).json()["ok"]
        assert ask(engine.base_url) == echo_without(*PICKED_BY_3)
        state = requests.get(control, timeout=5).json()
        assert state["answers"] == {"skip_once_every": 3}
        assert [r["answer_faults"] for r in state["requests"]] == [["skip_once 4 Mme la présidente",
                                                                    "skip_once 6 M. Dupont"]]

        # reset forgets the turns seen (and the records) but keeps the answers
        assert requests.post(control, json={"reset": True}, timeout=5).json()["ok"]
        assert requests.get(control, timeout=5).json()["answers"] == {"skip_once_every": 3}
        assert ask(engine.base_url) == echo_without(*PICKED_BY_3)

        refused = requests.post(control, json={"answers": {"skip_every": 3}}, timeout=5)
        assert refused.status_code == 400 and "skip_every" in refused.json()["message"]
        assert requests.post(control, json={"answers": {}}, timeout=5).json()["ok"]
        assert ask(engine.base_url) == ECHO


def test_the_answers_flag_configures_the_fake_run_as_a_process():
    engine = FakeEngineProcess("--answers", json.dumps({"skip_always_every": 2, "invent_figure": FIGURE}))
    try:
        expected = echo_without(*PICKED_BY_2)
        assert ask(engine.base_url) == [f"{expected[0]} {FIGURE}", *expected[1:]]
        [record] = engine.chat_requests(prompts=False)
        assert record["answer_faults"] == ["skip_always 1 M. Dupont", "skip_always 2 Mme la ministre",
                                           "skip_always 4 Mme la présidente", "skip_always 5 Mme Martin",
                                           "invent_figure"]
    finally:
        engine.stop()
