"""Acceptance tests: a real `corral serve` subprocess driven over HTTP and the CLI."""
