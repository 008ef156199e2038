"""`loam serve`: the Ollama- and OpenAI-compatible API over a scheduler of runner processes."""
