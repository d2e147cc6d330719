"""End-to-end tests against real engines (LLM_GATEWAY_E2E=1)."""
