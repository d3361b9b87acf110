"""Implementations of the ``astrid`` commands that read and write files."""
