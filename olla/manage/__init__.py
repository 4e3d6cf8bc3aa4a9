"""Fleet model management: Ollama's pull, create, copy, delete, push and blob routes answered
once for every machine (``model_management`` in the config).

``targets`` picks the machines, ``createshape`` says a create the way each Ollama takes it,
``progress`` merges the machines' progress streams into one, ``upstream`` makes the calls to
one machine, ``calls`` runs one management call across its targets and answers it,
``manager`` holds what every call shares (the fleet, the targets, who may) and ``resource``
puts it all in front of a provider route.
"""
