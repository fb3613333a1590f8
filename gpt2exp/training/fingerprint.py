"""A resolved run config's fingerprint: what resume (`resume`) and a sweep's model store
(`reuse`) compare to tell whether two runs train the same thing."""

import hashlib
import json
from collections.abc import Iterable


def without_keys(resolved: dict, keys: Iterable[str]) -> dict:
    """A plain copy of a resolved config without the dotted `keys` (whole sections or leaves)."""
    pruned = json.loads(json.dumps(resolved, default=str))
    for key in keys:
        *parents, leaf = key.split(".")
        section = pruned
        for parent in parents:
            section = section.get(parent, {})
        section.pop(leaf, None)
    return pruned


def config_hash(resolved: dict, ignored: Iterable[str] = ()) -> str:
    """sha256 (hex) of a resolved config without the `ignored` dotted keys."""
    return hashlib.sha256(json.dumps(without_keys(resolved, ignored), sort_keys=True).encode()).hexdigest()
