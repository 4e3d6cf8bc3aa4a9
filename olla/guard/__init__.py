"""What stands between a client and olla's routes on a shared box.

``clientip`` (who is asking, through trusted proxies), ``ratelimit`` (token buckets),
``cors`` (browser preflights), ``clientauth`` (client API keys) and ``policy`` (who may read
``/internal/*``) are pure and clock-driven; ``resource`` applies them to each request in front
of the resource tree.
"""
