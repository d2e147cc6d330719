"""The summarization pipeline: transcript → tokens → batches → engine calls → report. No job store, no HTTP."""
