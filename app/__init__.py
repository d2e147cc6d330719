"""LLM Gateway: a transcript-summarization service in front of an OpenAI-compatible engine."""
