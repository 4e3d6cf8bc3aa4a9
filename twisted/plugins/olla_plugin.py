from twisted.application.service import ServiceMaker

olla = ServiceMaker(
    "olla", "olla.daemon.tap", "Reverse proxy and load balancer for LLM servers", "olla"
)
