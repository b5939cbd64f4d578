"""`margin bench`: a serving benchmark for any OpenAI-compatible endpoint (vLLM's metric definitions, DESIGN §7)
with $/1K tokens, J/token and gCO2e/1K tokens from margin's economics code. See `SCHEMA.md` for the result."""
