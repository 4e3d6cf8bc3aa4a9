"""``python -m tests.fakes.ollama``: run the fake server (see ``main``)."""

import sys

from tests.fakes.ollama.server import main

sys.exit(main())
