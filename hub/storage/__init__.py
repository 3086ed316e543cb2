"""The hub's store: schema, engine and migrations, the writer."""
