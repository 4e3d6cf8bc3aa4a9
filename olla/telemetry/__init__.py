"""The figures olla keeps about itself: request and probe statistics, recent failovers, and
what it refused to protect itself."""
