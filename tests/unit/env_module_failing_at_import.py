"""An env module whose own code fails while it is imported (for the registry and CLI tests)."""

raise RuntimeError("this env module is broken on purpose")
