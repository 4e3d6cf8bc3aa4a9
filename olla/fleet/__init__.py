"""The fleet's state: the endpoints and what olla has learnt of them (health, circuits, model
lists, what is loaded where, sessions), the pollers that keep it true, and the balancer that
reads it."""
