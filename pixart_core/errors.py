"""Errors raised by pixart_core; each message names the file and says what to do."""


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded (missing, truncated, wrong model, bad keys)."""


class TokenizerNotFoundError(FileNotFoundError):
    """No T5 tokenizer files (tokenizer.json or spiece.model) were found."""


def format_keys(keys, limit: int = 6) -> str:
    """Up to `limit` sorted key names for an error message, with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
