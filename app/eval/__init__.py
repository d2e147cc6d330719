"""Summary quality: score summaries against reference summaries, or run a gateway on a test set and score it.

    python3 -m app.eval score --predictions DIR --references DIR [--transcripts DIR] [--json FILE]

scores every `DIR/NAME.txt` against `references/<k>/NAME.txt` (one sub-folder per reference set):
ROUGE-1, ROUGE-2 and ROUGE-L F1 × 100 from rouge-score's scorer with a Unicode word tokenizer
(lower-cased `\\w+` runs, no stemming; rouge-score's own keeps only [a-z0-9] and breaks French words),
taking for each file and metric the best of the references it has, averaged over the files with a
prediction. With `--transcripts DIR` each summary is also checked against its transcript: figures ok %
(its numbers the transcript also has, separators normalised: "3 300 000" = "3.300.000" = "3300000",
"12,5" = "12.5"), names ok % (its capitalised words, sentence starts aside, that the transcript has),
compression (its words ÷ the transcript's) and new 3-grams % (its word trigrams the transcript lacks).
It prints a table; `--json FILE` writes {"count", "rouge1", "rouge2", "rougeL", …, "files": [{"name", …}]}.

    python3 -m app.eval run DATA_DIR --url URL --service NAME --flavor NAME [--api-key KEY]
                            [--out DIR] [--limit N] [--timeout S] [--json FILE] [--markdown FILE]

submits every `DATA_DIR/transcripts/NAME.txt` to a running gateway (as `python3 -m app.client` does),
follows the jobs with a progress bar, writes the summaries to `--out` (default: a new temporary folder,
printed), then scores them as `score` does against `DATA_DIR/references/<k>/`, with each job's calls,
tokens, seconds (submission to end) and `checks` when the gateway reports them. The systems in
`DATA_DIR/predictions/<system>/` are scored the same way on the same files, for comparison.
`--markdown FILE` writes the tables and, if matplotlib is installed, a ROUGE bar chart `FILE.png`.
Exit codes: 0 done, 1 a job did not complete (or nothing scored, or the gateway failed), 2 usage.

Example, on FREDSum's test split (French political debates; CC BY-SA 4.0, see tests/data/SOURCES.md):

    python3 -m app.eval score --predictions tests/data/fredsum_test/predictions/ChatGPT \\
        --references tests/data/fredsum_test/references --transcripts tests/data/fredsum_test/transcripts
    python3 -m app.eval run tests/data/fredsum_test --service cra --flavor mixtral --markdown report.md
"""
