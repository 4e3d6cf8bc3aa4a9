"""The Anthropic Messages API: passthrough where a backend speaks it, translation elsewhere."""
