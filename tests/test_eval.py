"""`python3 -m app.eval`: FREDSum's published ROUGE figures reproduced from the shipped predictions; the
tokenizer and the support measures on small texts; `run` against the real gateway and the fake engine."""
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from app.eval import metrics
from app.eval.cli import main
from app.eval.scores import score_folder
from tests.processes import FakeEngineProcess, Gateway

FREDSUM = Path(__file__).parent / "data" / "fredsum_test"

# FREDSum's published figures (ROUGE-1, ROUGE-2, ROUGE-L; see tests/data/SOURCES.md), for its 28 predictions.
PUBLISHED = {
    "ChatGPT": (45.22, 14.95, 22.40),
    "Barthez": (36.40, 9.34, 17.47),
    "Openassistant_Llama_30b": (35.37, 8.86, 17.90),
}


@pytest.mark.parametrize("system", sorted(PUBLISHED))
def test_score_reproduces_the_published_figures(system):
    score = score_folder(FREDSUM / "predictions" / system, FREDSUM / "references")
    measured = tuple(score[metric] for metric in metrics.ROUGE_METRICS)
    print(f"{system}: ROUGE-1/2/L {measured[0]:.2f} / {measured[1]:.2f} / {measured[2]:.2f}")
    assert score["count"] == len(score["files"]) == 28 and "skipped" not in score
    assert measured == pytest.approx(PUBLISHED[system], abs=0.05)


def test_score_command_writes_json_with_the_transcript_measures(tmp_path):
    out = tmp_path / "scores.json"
    done = subprocess.run([sys.executable, "-m", "app.eval", "score", "--predictions",
                           str(FREDSUM / "predictions/Barthez"), "--references", str(FREDSUM / "references"),
                           "--transcripts", str(FREDSUM / "transcripts"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "mean over 28 files" in done.stdout and "ROUGE-L" in done.stdout
    body = json.loads(out.read_text(encoding="utf-8"))
    assert body["rouge1"] == pytest.approx(PUBLISHED["Barthez"][0], abs=0.05)
    assert len(body["files"]) == 28 and {"name", "rouge1", "rouge2", "rougeL"} <= set(body["files"][0])
    for key in ("figure_support", "name_support", "novel_trigrams"):
        assert 0 <= body[key] <= 100
    assert 0 < body["compression"] < 1


def test_each_file_takes_the_references_it_has_and_one_without_any_is_skipped(tmp_path):
    for folder, files in {"pred": "abc", "refs/1": "a", "refs/2": "ab"}.items():
        (tmp_path / folder).mkdir(parents=True)
        for name in files:
            (tmp_path / folder / f"{name}.txt").write_text("le débat porte sur la retraite", encoding="utf-8")
    score = score_folder(tmp_path / "pred", tmp_path / "refs")
    assert [(row["name"], row["references"]) for row in score["files"]] == [("a", ["1", "2"]), ("b", ["2"])]
    assert score["skipped"] == ["c"] and score["count"] == 2 and score["rouge1"] == pytest.approx(100)


def test_the_best_reference_is_chosen_per_metric():
    scorer = metrics.rouge_scorer()
    prediction = "le chat dort sur le tapis rouge"
    shuffled = "rouge tapis le sur dort chat le"            # every word, no pair in order
    close = "le chat dort sur le tapis bleu ce soir"       # most pairs in order, fewer words in common
    best = metrics.best_rouge(scorer, prediction, [shuffled, close])
    assert best["rouge1"] == pytest.approx(100)
    assert best["rouge2"] == pytest.approx(100 * scorer.score(close, prediction)["rouge2"].fmeasure)
    assert best["rouge2"] > 100 * scorer.score(shuffled, prediction)["rouge2"].fmeasure


def test_the_tokenizer_keeps_accented_words_whole():
    from rouge_score import tokenize as rouge_default

    text = "Démocratie, ÉLECTION à l'Assemblée : 12,5 % ; Noël"
    words = ["démocratie", "élection", "à", "l", "assemblée", "12", "5", "noël"]
    assert metrics.WordTokenizer().tokenize(text) == words
    assert metrics.WordTokenizer().tokenize(unicodedata.normalize("NFD", text)) == words
    assert rouge_default.tokenize("démocratie", None) == ["d", "mocratie"]     # why it is not used


@pytest.mark.parametrize("written", ["3 300 000", "3\u202f300\u202f000", "3\u00a0300\u00a0000", "3.300.000",
                                     "3,300,000", "3300000"])
def test_figures_are_read_whatever_their_separators(written):
    assert metrics.figures(f"il y a {written} chômeurs.") == {frozenset({metrics.Decimal(3300000)})}


def test_figure_support_normalises_decimals_and_ignores_list_numbers():
    transcript = "M. DURAND : 3.300.000 chômeurs, un taux de 12.5 %, et 3 300 contrats."
    prediction = ("1. Il cite 3 300 000 chômeurs et 12,5 %.\n"
                  "2. Il parle de 3.300 contrats et de 40 000 emplois (COP21).")
    share, count = metrics.figure_support(prediction, transcript)
    assert count == 4 and share == pytest.approx(75)        # 40 000 is not in the transcript
    assert metrics.figure_support("Aucun chiffre.", transcript) == (None, 0)
    # "3.300" may be 3300 or 3.3: either reading matches.
    assert metrics.figure_support("3,3", "3.300")[0] == 100 and metrics.figure_support("3300", "3.300")[0] == 100


def test_figure_support_counts_figures_the_transcript_says_in_words():
    transcript = "M. DURAND : quarante-huit mille cent soixante-treize votants, soit trois millions d'euros."
    share, count = metrics.figure_support("Il cite 48 173 votants, 3 millions d'euros et 12 recours.", transcript)
    assert count == 3 and share == pytest.approx(100 * 2 / 3)        # 12 is never said


def test_names_leave_out_sentence_starts_but_not_titles():
    prediction = ("Dans ce débat, M. Chirac répond à Lionel Jospin. Il parle de l'État.\n"
                  "- Le chômage selon Mme Le Pen et Monsieur Bayrou : **Selon** elle, rien.")
    assert metrics.names(prediction) == {"chirac", "lionel", "jospin", "état", "le", "pen", "bayrou"}
    transcript = "M. CHIRAC : L'ETAT doit agir.\nM. JOSPIN : Madame Le Pen et M. Bayrou ont tort."
    share, count = metrics.name_support(prediction, transcript)
    assert count == 7 and share == pytest.approx(100 * 6 / 7)     # Lionel is never said


def test_novel_trigrams_and_compression():
    assert metrics.novel_trigrams("le chat dort bien", "le chat dort mal") == pytest.approx(50)
    assert metrics.novel_trigrams("deux mots", "deux mots") is None
    assert metrics.compression("un deux", "un deux trois quatre") == pytest.approx(0.5)


@pytest.mark.slow
def test_run_summarises_on_a_gateway_and_scores(tmp_path, capsys):
    services = tmp_path / "services"
    shutil.copytree(Path(__file__).parent.parent / "services", services)
    engine = FakeEngineProcess("--delay", "0.01")
    gateway = None
    try:
        gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=1).start()
        report, out = tmp_path / "report.json", tmp_path / "out"
        code = main(["run", str(FREDSUM), "--url", gateway.url, "--service", "cra", "--flavor", "mixtral",
                     "--limit", "2", "--out", str(out), "--json", str(report),
                     "--markdown", str(tmp_path / "report.md"), "--timeout", "180"])
    finally:
        if gateway:
            gateway.stop()
        engine.stop()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    body = json.loads(report.read_text(encoding="utf-8"))
    names = [path.stem for path in sorted((FREDSUM / "transcripts").glob("*.txt"))[:2]]
    assert [row["name"] for row in body["files"]] == names and body["complete"] == body["count"] == 2
    assert sorted(path.stem for path in out.glob("*.txt")) == names
    for row in body["files"]:
        assert row["state"] == "complete" and row["calls"] >= 1 and row["tokens"] > 0 and row["seconds"] >= 0
        assert all(0 <= row[metric] <= 100 for metric in metrics.ROUGE_METRICS)
        assert 0 < row["compression"] and 0 <= row["novel_trigrams"] <= 100
        # cra checks every answer turn by turn: the fake echoes every turn, so none is missing
        assert row["checks"]["turns"] > 0 and row["checks"]["missing"] == 0
    assert body["checks"]["turns"] == sum(row["checks"]["turns"] for row in body["files"])
    assert set(body["systems"]) == set(PUBLISHED) and all(s["count"] == 2 for s in body["systems"].values())
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Beside the published systems" in markdown and "| ChatGPT |" in markdown
    assert (tmp_path / "report.png").is_file() or "matplotlib is not installed" in printed.err
    print(f"run cra/mixtral on the fake engine, 2 files: ROUGE-1/2/L {body['rouge1']:.2f} / {body['rouge2']:.2f} / "
          f"{body['rougeL']:.2f}, {body['calls']:.1f} calls and {body['seconds']:.1f} s a job")


def test_a_failed_job_keeps_its_reason_and_an_unreachable_gateway_fails_the_run(tmp_path, capsys):
    from app.eval.runs import job_figures

    failed = {"status": "error", "state": "failed", "error": "engine down", "createdAt": 10.0, "finishedAt": 12.5,
              "usage": {"calls": 2, "prompt_tokens": 30, "completion_tokens": 0}, "checks": {"speakers": False}}
    assert job_figures(failed) == {"state": "failed", "error": "engine down", "calls": 2, "prompt_tokens": 30,
                                   "completion_tokens": 0, "tokens": 30, "seconds": 2.5, "checks": {"speakers": False}}
    code = main(["run", str(FREDSUM), "--url", "http://127.0.0.1:9", "--service", "cra", "--flavor", "mixtral",
                 "--limit", "1", "--out", str(tmp_path)])
    assert code == 1 and "cannot reach the gateway" in capsys.readouterr().err
