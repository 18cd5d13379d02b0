"""ConfigError and :func:`need`, the one way a configuration rule is written (lib.infra.config and the
modules of its sections)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be valid: the message says what is wrong and what is allowed."""


def need(ok, msg: str) -> None:
    """A value rule: raise ConfigError(msg) unless ``ok`` (the message names the key and what is valid)."""
    if not ok:
        raise ConfigError(msg)
