"""The chat agent: LLM providers, tools, conversations and turns."""
