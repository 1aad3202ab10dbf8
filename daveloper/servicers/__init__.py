"""One servicer per proto service; all business logic lives here."""
