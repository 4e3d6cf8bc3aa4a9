"""olla: a reverse proxy and load balancer for self-hosted LLM servers."""

__version__ = "0.1.0"
