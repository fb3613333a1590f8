"""Whether a web service answers: the one probe made before a run goes online (W&B) or to the
Hugging Face hub, so that an unreachable host costs a few seconds instead of a library's
retries. It honours the proxy settings (``HTTPS_PROXY``, ``NO_PROXY``)."""

from __future__ import annotations

import urllib.error
import urllib.request


def unreachable(url: str, timeout_s: float) -> str | None:
    """Why `url` gives no HTTP answer within `timeout_s` seconds, in a few words for a message,
    or None when it answers (any HTTP status counts: the point is that it answers)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"no answer from {url} ({getattr(reason, 'strerror', None) or reason})"
    return None
