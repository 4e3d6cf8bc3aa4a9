"""Small helpers every layer may use: dialect errors, JSON answers, deadlines, bounded bodies,
failure causes, short ids, and the network access check."""
