"""How a config value is read: the raw string, its default, its parser, and one message per bad key
that names the key and its fix and never shows a secret value. The keys themselves (which exist,
their defaults) are the contract in components/config.py."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from typing import Any

from pulumi.runtime import config as runtime_config

from components.parse import Invalid

NAMESPACE = "postal-gateway"  # the project name (Pulumi.yaml): keys are postal-gateway:<key>
# Keys whose values are secret whether or not they were set with --secret.
SECRET_KEYS = ("tlsCertificate", "tlsPrivateKey")


class Reader:
    """Reads raw values and collects one message per bad key; secret values are never shown."""

    def __init__(self, namespace: str = NAMESPACE, defaults: dict[str, Any] | None = None):
        self.namespace = namespace
        self.defaults = defaults or {}
        self.errors: list[str] = []

    def key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def raw(self, key: str) -> str | None:
        value = runtime_config.get_config(self.key(key))
        return None if value is None or value == "" else str(value)

    def secret(self, key: str) -> bool:
        return (self.namespace == NAMESPACE and key in SECRET_KEYS) or runtime_config.is_config_secret(self.key(key))

    def show(self, key: str, value: Any) -> str:
        """`value` as a message may show it: quoted, or only the key's name when it is secret."""
        return f"the secret {key}" if self.secret(key) else repr(value)

    def fail(self, key: str, message: str, fix: str) -> None:
        self.errors.append(f"{self.key(key)}: {message}. Fix: {fix}")

    def value(self, key: str, parse: Callable[[Any], Any], expected: str, fix: str, required: bool = False) -> Any:
        raw = self.raw(key)
        if raw is None:
            if required:
                self.fail(key, f"is required ({expected})", fix)
                return None
            default = self.defaults.get(key)
            if default is None:
                return None
            raw = json.dumps(default) if isinstance(default, (list, dict, bool)) else str(default)
        try:
            return parse(raw)
        except ValueError as err:
            problem, item = (err.problem, err.item) if isinstance(err, Invalid) else (str(err), None)
            if self.secret(key):
                self.fail(key, f"the secret value is not valid ({problem}); expected {expected}", fix)
            else:
                detail = f"{item!r}: {problem}" if item is not None and str(item) != raw else problem
                self.fail(key, f"{raw!r} is not valid ({detail}); expected {expected}", fix)
            return None

    def unknown_keys(self, keys: tuple[str, ...]) -> None:
        """One message per key of this namespace that is not in `keys`, with the likely intended one."""
        names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
        prefix = self.namespace + ":"
        for name in sorted(n for n in names if n.startswith(prefix)):
            key = name[len(prefix) :]
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(keys)}"
                self.fail(key, "is not a postal-gateway setting", f"{hint} (pulumi config rm {name})")
