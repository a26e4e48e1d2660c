"""Errors raised by pixart_core; each message names the file and says what to do."""


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded (missing, truncated, wrong model, bad keys)."""


class TokenizerNotFoundError(FileNotFoundError):
    """No T5 tokenizer files (tokenizer.json or spiece.model) were found."""
