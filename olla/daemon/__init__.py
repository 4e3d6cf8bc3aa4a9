"""The daemon: the composition root (``app``), hot reload, the ``--workers`` supervisor and
its workers, the log observers, and twistd's entry point (``tap``)."""
