"""Runners lease jobs over HTTP (protocol v1) and run executors."""

from corral.runner.runner import Runner

__all__ = ["Runner"]
