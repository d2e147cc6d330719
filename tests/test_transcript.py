"""Parsing transcripts into turns, on the shared real transcripts and on hand-made edge cases."""
import json
import os
from pathlib import Path

import pytest

from app.pipeline.speakers import label_strength
from app.pipeline.transcript import Turn, TranscriptError, decode_bytes, parse_transcript

DATA = Path(__file__).parent / "data"
FR_MEDIUM = DATA / "fr" / "fr_medium_an_qag_2013-02-12.txt"
FR_SMALL = DATA / "fr" / "fr_small_an_qag_securite_alimentaire_2013-02-12.txt"
EN_SMALL = DATA / "en" / "en_small_ami_TS3010a.txt"
AW = DATA / "awkward"
TRANSCRIPTS = sorted(p for p in DATA.glob("*/*")
                     if p.suffix in (".txt", ".srt", ".vtt") and ".summary" not in p.name)


def parse(path: Path) -> list[Turn]:
    return parse_transcript(path.read_bytes(), path.name)


def one_turn_per_line(path: Path) -> list[Turn]:
    """The fr/ and en/ files' own convention (SOURCES.md): labels never contain " : "."""
    turns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        speaker, _, text = line.partition(" : ")
        turns.append(Turn(speaker, text))
    return turns


@pytest.mark.parametrize("path", [p for p in TRANSCRIPTS if p.parent.name in ("fr", "en")],
                         ids=lambda p: p.name)
def test_one_turn_per_line_files_parse_to_their_lines(path):
    assert parse(path) == one_turn_per_line(path)


def test_assemblee_nationale_labels():
    turns = parse(FR_MEDIUM)
    assert len(turns) == 149
    assert len({t.speaker for t in turns}) == 55
    assert turns[0] == Turn("M. le président", "L'ordre du jour appelle les questions au Gouvernement.")
    assert turns[2].speaker == "Nathalie Kosciusko-Morizet"
    assert turns[3] == Turn("Un député du groupe UMP", "C'est moche !")
    assert turns[6].speaker == "Vincent Peillon, ministre de l'éducation nationale"
    speakers = {t.speaker for t in turns}
    assert {"Benoît Hamon, ministre délégué chargé de l'économie sociale et solidaire et de la consommation",
            "Michel Sapin, ministre du travail, de l'emploi, de la formation professionnelle "
            "et du dialogue social",
            "Plusieurs députés du groupe UMP", "Charles de La Verpillière", "Jacques Alain Bénisti",
            "Jean-Marc Ayrault, Premier ministre"} <= speakers
    assert turns[-1].speaker == "M. le président"


def test_continuation_lines_with_early_colons_parse_like_one_turn_per_line():
    # aw07a: 139 paragraphs without a label, some with "…partagées : il faut…" early colons.
    raw = (AW / "aw07a_crlf_bom_continuation_lines_fr.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    continued = parse(AW / "aw07a_crlf_bom_continuation_lines_fr.txt")
    assert continued == parse(FR_MEDIUM)  # same speakers, same texts, same order
    assert any("Les analyses sont simples et partagées : il faut" in t.text for t in continued)
    assert not any(t.speaker.startswith(("Les analyses", "Cependant", "Résultat")) for t in continued)


def test_windows_1252_decodes_to_the_same_turns():
    raw = (AW / "aw07b_cp1252_crlf_fr.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = decode_bytes(raw)
    assert "M. le président" in text and "élèves" in text and "Ã" not in text
    turns = parse(AW / "aw07b_cp1252_crlf_fr.txt")
    # The cp1252 copy had ’ replaced by ' (SOURCES.md); otherwise it is aw07a.
    expected = [Turn(t.speaker.replace("’", "'"), t.text.replace("’", "'"))
                for t in parse(AW / "aw07a_crlf_bom_continuation_lines_fr.txt")]
    assert turns == expected


def test_webvtt_voice_tags_merge_consecutive_cues():
    turns = parse(AW / "aw06_subtitles_voice_tags_fr.vtt")
    assert turns == parse(FR_SMALL)  # the same sitting, cut into 2.5-word-per-second cues
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:]))


def test_srt_name_prefix_on_first_cue_only():
    path = AW / "aw05_subtitles_en.srt"
    turns = parse(path)
    assert {t.speaker for t in turns} == {"Mat Ryer", "Jaana Dogan", "Francesc Campoy",
                                          "Isobel Redelmeier"}
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:]))
    assert turns[0].speaker == "Mat Ryer"
    assert turns[0].text.startswith("Hello, and welcome to Go Time. I'm Mat Ryer. Today we're "
                                    "talking about the Context package.")
    assert turns[0].text.endswith("joined by Jaana B. Dogan. Hello, Jaana.")
    assert turns[1] == Turn("Jaana Dogan", "Hey! How are you?")
    # Every word of every cue is in the turns, in order (labels aside).
    cue_words = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        cue = " ".join(block.splitlines()[2:])
        label, colon, rest = cue.partition(":")
        cue_words += (rest if colon and label in {t.speaker for t in turns} else cue).split()
    assert " ".join(t.text for t in turns).split() == cue_words


def test_qmsum_markup_is_removed_and_empty_turns_dropped():
    turns = parse(AW / "aw09_qmsum_markup_en.txt")
    assert not any("{" in t.text or "}" in t.text for t in turns)
    assert all(any(ch.isalnum() for ch in t.text) for t in turns)
    # Same meeting as en_small (whose text was also re-punctuated): same speaker sequence.
    assert [t.speaker for t in turns] == [t.speaker for t in parse(EN_SMALL)]
    assert turns[0] == Turn("Project Manager", "So welcome . The first kick-off meeting . What shall "
                            "we do ? First the opening , then the rest . What are we going to do . "
                            "We m have to make a new remote control .")


def test_no_labels_gives_one_unnamed_turn_per_line():
    path = AW / "aw02_no_speaker_labels_fr.txt"
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert parse(path) == [Turn("", ln) for ln in lines]


def test_very_long_single_turn_is_one_turn():
    turns = parse(AW / "aw01_very_long_single_turn_fr.txt")
    assert [t.speaker for t in turns] == [
        "Mme la présidente", "Mme la présidente",
        "Pierre Moscovici, ministre de l'économie et des finances", "Christian Paul",
        "Pierre Moscovici, ministre"]
    assert len(turns[2].text) > 18_000


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_every_shared_transcript_parses_into_sensible_turns(path):
    turns = parse(path)
    assert turns
    for turn in turns:
        assert turn.text == turn.text.strip() and turn.text
        assert "\n" not in turn.text and "\r" not in turn.text and "\ufeff" not in turn.text
        assert len(turn.speaker) <= 150 and ":" not in turn.speaker
    # No file has more than 60 speakers; a label rule gone wrong invents hundreds.
    assert len({t.speaker for t in turns}) <= 60


# --- labels, timestamps, formats -------------------------------------------------------------

@pytest.mark.parametrize("label", [
    "M. le président", "Mme la présidente", "Mme Nathalie Kosciusko-Morizet",
    "Benoît Hamon, ministre délégué chargé de la consommation", "O'Brien", "Speaker 3", "P1",
    "Un député du groupe UMP", "Jaana Dogan", "Charles de La Verpillière", "Project Manager",
    "SPEAKER_00", "Dr. Smith", "Valéry Giscard d'Estaing", "Jean Dupont (UDI)",
])
def test_real_labels_are_trusted(label):
    assert label_strength(label) == 2


@pytest.mark.parametrize("prefix", [
    "Les analyses sont simples et partagées",
    "Monsieur le ministre de l'agriculture, pourriez-vous répondre clairement aux questions suivantes",
    "L'OCDE devait combattre les pratiques fiscales agressives des multinationales. Résultat",
    "La reconstruction est donc nécessaire ; elle est engagée",
    "so here is the thing", "Quels sont ces signaux ? Un prix",
    "Cette avancée est « historique » selon lui",
])
def test_speech_before_a_colon_is_not_a_label(prefix):
    assert label_strength(prefix) == 0 or label_strength(prefix) == 1
    text = f"M. le président : Bonjour.\n{prefix} : la suite du discours.\n"
    assert parse_transcript(text) == [Turn("M. le président",
                                           f"Bonjour. {prefix} : la suite du discours.")]


def test_one_word_before_a_comma_needs_corroboration():
    # "Cependant, il faudra …" is speech; "Macron, président" is a label once Macron spoke.
    speech = "Bruno Le Roux : Bien.\nCependant, il faudra résoudre des problèmes : les financer.\n"
    assert parse_transcript(speech) == [
        Turn("Bruno Le Roux", "Bien. Cependant, il faudra résoudre des problèmes : les financer.")]
    debate = "Macron : Oui.\nLe Pen : Non.\nMacron, président : Si.\n"
    assert [t.speaker for t in parse_transcript(debate)] == ["Macron", "Le Pen", "Macron, président"]


def test_a_short_lower_case_label_is_trusted_when_it_recurs():
    text = "Audience member: Why?\nHost: Because.\nAudience member: Thanks.\n"
    assert [t.speaker for t in parse_transcript(text)] == ["Audience member", "Host",
                                                          "Audience member"]
    once = "Host: Welcome.\nSo the plan: we start now.\n"
    assert parse_transcript(once) == [Turn("Host", "Welcome. So the plan: we start now.")]


@pytest.mark.parametrize("text, expected", [
    ("[00:01:23] Speaker 1: Hello there.\n[00:01:30] Speaker 2: Hi.",
     [Turn("Speaker 1", "Hello there."), Turn("Speaker 2", "Hi.")]),
    ("Speaker 1 (00:01:23): Hello there.\nSpeaker 2 [00:01:30]: Hi.",
     [Turn("Speaker 1", "Hello there."), Turn("Speaker 2", "Hi.")]),
    ("(01:23) Alice : Bonjour.\n00:01:30 Bob : Salut.",
     [Turn("Alice", "Bonjour."), Turn("Bob", "Salut.")]),
    ("Speaker 1  0:03\nHello there.\nStill me.\nSpeaker 2  0:10\nHi.",
     [Turn("Speaker 1", "Hello there. Still me."), Turn("Speaker 2", "Hi.")]),
    ("Jaana Dogan:Hey!\nMat Ryer: Good, thanks.", [Turn("Jaana Dogan", "Hey!"),
                                                  Turn("Mat Ryer", "Good, thanks.")]),
    ("M. le président\u00a0: La parole est à M. Dupont.\nM. Dupont\u202f: Merci.",
     [Turn("M. le président", "La parole est à M. Dupont."), Turn("M. Dupont", "Merci.")]),
    ("Alice: see https://example.org/a:b for details\nBob: ok",
     [Turn("Alice", "see https://example.org/a:b for details"), Turn("Bob", "ok")]),
    ("Compte rendu de la séance\nAlice : Bonjour.", [Turn("", "Compte rendu de la séance"),
                                                     Turn("Alice", "Bonjour.")]),
])
def test_labels_and_timestamps(text, expected):
    assert parse_transcript(text) == expected


def test_srt_without_filename_is_sniffed_and_tags_removed():
    srt = ("1\r\n00:00:01,000 --> 00:00:02,000\r\nAlice: <i>Hello</i> there,\r\n\r\n"
           "2\r\n00:00:02,000 --> 00:00:03,000\r\nhow are you?\r\n\r\n"
           "3\r\n00:00:03,000 --> 00:00:04,000\r\nBob: Fine.\r\n")
    expected = [Turn("Alice", "Hello there, how are you?"), Turn("Bob", "Fine.")]
    assert parse_transcript(srt.encode()) == expected
    assert parse_transcript(srt.encode(), "talk.srt") == expected


def test_webvtt_with_cue_ids_notes_and_several_voices():
    vtt = ("WEBVTT\n\nNOTE made by hand\nspanning two lines\n\nintro\n00:01.000 --> 00:02.000\n"
           "<v.loud Alice>Hello</v>\n<v Bob>Hi <c.x>you</c></v>\n\n"
           "00:02.000 --> 00:03.000\n<v Bob>again</v>\n")
    assert parse_transcript(vtt) == [Turn("Alice", "Hello"), Turn("Bob", "Hi you again")]


def test_json_segments():
    segments = [{"speaker": "Alice", "text": " Bonjour. ", "start": 0.0},
                {"speaker": "Alice", "text": "Ça va ?"},
                {"speaker": "Bob", "text": "{vocalsound}"},
                {"speaker": None, "text": "Applaudissements."}]
    expected = [Turn("Alice", "Bonjour. Ça va ?"), Turn("", "Applaudissements.")]
    assert parse_transcript(json.dumps(segments).encode()) == expected
    assert parse_transcript(json.dumps({"segments": segments}), "x.json") == expected
    with pytest.raises(TranscriptError, match="JSON"):
        parse_transcript("[{'speaker': 'A'}", "x.json")
    with pytest.raises(TranscriptError, match="text"):
        parse_transcript(json.dumps([{"speaker": "A"}]), "x.json")


def test_a_text_file_that_looks_like_json_but_is_not_is_text():
    assert parse_transcript("[00:00:01] Alice: [rires] Bonjour.") == [
        Turn("Alice", "[rires] Bonjour.")]


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b" \r\n\t \n", "empty"),
    ("\ufeff  \n".encode(), "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "PNG"),
    (b"%PDF-1.7\n%\xe2\xe3", "PDF"),
    (b"Alice: hello\x00\x00world", "binary"),
    (bytes(range(1, 32)) * 40, "binary"),
    (b"\x81\x8d\x8f\x90\x9d" * 20, "neither UTF-8 nor Windows-1252"),
    (b"... --- !!! ???\n123 456", "no words"),
    (b"Alice : {vocalsound}\nBob : ...", "no words"),
])
def test_unusable_input_is_rejected_with_a_message(data, message):
    with pytest.raises(TranscriptError, match=message):
        parse_transcript(data)


def test_random_bytes_are_rejected():
    for seed in range(5):
        with pytest.raises(TranscriptError):
            parse_transcript(os.urandom(4096))


def test_utf16_with_bom_and_utf8_bom_crlf():
    text = "M. le président : Bonjour.\r\nYves Jégo : Merci.\r\n"
    expected = [Turn("M. le président", "Bonjour."), Turn("Yves Jégo", "Merci.")]
    assert parse_transcript(text.encode("utf-16")) == expected
    assert parse_transcript(b"\xef\xbb\xbf" + text.encode()) == expected
    assert parse_transcript(text.encode("cp1252")) == expected


def test_mostly_utf8_with_a_broken_byte_stays_utf8():
    data = "Yves Jégo : Très bien, élégant, déjà vu.\n".encode() * 5 + b"Bob : caf\xe9\n"
    turns = parse_transcript(data)
    assert turns[0] == Turn("Yves Jégo", "Très bien, élégant, déjà vu.")
    assert turns[-1] == Turn("Bob", "caf\ufffd")


def test_ten_megabytes_parse_whole():
    # Speed is measured by scripts/bench.py (P3), not asserted here.
    data = (AW / "aw07a_crlf_bom_continuation_lines_fr.txt").read_bytes() * 130  # 130 BOMs
    assert len(data) > 10_000_000
    turns = parse_transcript(data, "big.txt")
    assert len(turns) == 149 * 130


# --- LinTO Studio's exports: "<speaker_name> : <segment>" lines, speakers named by diarization ids ----

@pytest.mark.parametrize("speaker", ["spk1", "spk_2", "speaker_0", "speaker", "SPEAKER_00", "undefined", "spk12"])
def test_diarization_ids_in_any_case_are_labels(speaker):
    text = f"Jean Dupont : Bonjour à tous.\n{speaker} : Merci : je commence.\nJean Dupont : Allez-y."
    assert parse_transcript(text) == [Turn("Jean Dupont", "Bonjour à tous."), Turn(speaker, "Merci : je commence."),
                                      Turn("Jean Dupont", "Allez-y.")]


def test_a_studio_export_with_ids_names_and_renamed_lower_case_speakers():
    text = "\n".join(["spk1 : Bonjour.", "Jean : Nous parlons du budget : il a augmenté.", "marie : Pourquoi ?",
                      "spk1 : Les loyers.", "undefined : Une question.", "speaker : Le vote est en mars."])
    assert [t.speaker for t in parse_transcript(text)] == ["spk1", "Jean", "marie", "spk1", "undefined", "speaker"]
    # A lower-case name that speaks once is trusted where most lines carry a label...
    assert parse_transcript("Jean : Bonjour.\nmarie : Salut.\nJean : Ok.")[1] == Turn("marie", "Salut.")
    # ...and speech that merely starts "word : " in an unlabelled text is still speech.
    assert parse_transcript("Voici le plan.\ndonc : on commence.\nEt on finit.") == [
        Turn("", "Voici le plan."), Turn("", "donc : on commence."), Turn("", "Et on finit.")]


def test_every_piece_of_a_long_spk1_turn_keeps_its_label():
    from app.pipeline.chunking import render_turn, split_long_turns
    from app.pipeline.tokenizers import default_tokenizer

    text = "spk1 : " + " ".join(f"mot{i}" for i in range(600)) + "\nspk2 : Merci."
    pieces = split_long_turns(parse_transcript(text), default_tokenizer(), 150)
    assert len(pieces) > 3
    assert [p.speaker for p in pieces] == ["spk1"] * (len(pieces) - 1) + ["spk2"]
    assert all(render_turn(p).startswith(f"{p.speaker} : ") for p in pieces)


def test_one_letter_speakers_even_particles_and_a_blank_line_between():
    # "e" and "y" are name particles ("Maria e Silva"); alone and capitalised they are speakers.
    assert parse_transcript("D : four\n\nE : five\nY : six") == [Turn("D", "four"), Turn("E", "five"), Turn("Y", "six")]
