"""The session's document store: parse, chunk, embed, store in Qdrant, search."""
