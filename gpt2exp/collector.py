"""Python's garbage collector around bursts of long-lived objects (imports, parsing).

A full collection walks every object the collector tracks; with torch and its compiler stack
imported that is about a million objects, so the collections that a burst of allocations
triggers cost seconds while finding next to no garbage.
"""

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused(*, freeze: bool = False) -> Iterator[None]:
    """No collection inside the block (the collector's state is restored after it). With
    `freeze`, every object alive at the block's end is left out of later collections
    (``gc.freeze``): for objects meant to live as long as the process, such as imported modules."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()


def skip_exit_collections() -> None:
    """At the interpreter's exit, leave every object alive then out of its final collections,
    which would walk them all (about half a second with torch imported) to free memory that the
    system takes back with the process anyway. The exit handlers run as before."""
    atexit.unregister(gc.freeze)  # registered once however many commands one process runs
    atexit.register(gc.freeze)
