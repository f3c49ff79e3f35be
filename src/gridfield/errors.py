"""User-facing errors: the CLI prints these as one line and exits non-zero (no stack trace)."""


class InputError(ValueError):
    """Bad user input (file, shape, value, option). The message names the problem and what to do."""
