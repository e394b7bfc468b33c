"""Intake sources that turn outside work into jobs (the queue folder, ...)."""
