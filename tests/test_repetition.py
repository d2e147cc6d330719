"""Loop detection on a model's cut answer (app/pipeline/repetition.py)."""
from app.pipeline.repetition import trim_repetition

# Answers SmolLM2-135M-Instruct gave at temperature 0 (vLLM's CPU build, the cra and summary
# templates on tests/data transcripts), shortened: each ran to max_tokens in a loop.
FRENCH = ("Yves Jégo : Il est vrai, monsieur le président, que le groupe que je représente ici aussi aussi "
          "aussi le groupe de l'Union des démocrates et indépendants, pourrai faire l'intervention, "
          + "pourrai faire le débat, " * 20 + "pourrai faire le")
ENGLISH = ("Project Manager : Um you can change some things.\nMarketing : Okay.\n"
           + "Project Manager : So So and after it you have to save it.\n" * 12 + "Project Manager : So So and")


def test_a_loop_is_cut_after_its_first_copy():
    assert trim_repetition(FRENCH) == ("Yves Jégo : Il est vrai, monsieur le président, que le groupe que je représente "
                                 "ici aussi aussi aussi le groupe de l'Union des démocrates et indépendants, "
                                 "pourrai faire l'intervention, pourrai faire le débat,")
    assert trim_repetition(ENGLISH) == ("Project Manager : Um you can change some things.\nMarketing : Okay.\n"
                                  "Project Manager : So So and after it you have to save it.")


def test_a_long_period_loop_is_found():
    block = "Project Manager: So welcome. The first kick-off meeting. What shall we do?\nMarketing: Yep.\n\n"
    text = "Minutes:\n" + block * 3 + "Project Manager: So"
    assert trim_repetition(text) == "Minutes:\n" + block.rstrip()


def test_text_without_a_loop_is_left_alone():
    minutes = "\n".join(f"Orateur {i} : il présente la mesure numéro {i} et répond aux questions" for i in range(30))
    assert trim_repetition(minutes) is None
    assert trim_repetition("non non non") is None                                # too short to call a loop
    assert trim_repetition("Alice : oui. " * 2 + "Bob : non.") is None          # two copies are not a loop
    assert trim_repetition("") is None
