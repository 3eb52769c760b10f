"""Tiny, seeded, random-weight models built offline for tests and the demo."""
