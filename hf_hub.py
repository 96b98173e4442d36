"""Whether the Hugging Face Hub answers, asked once and briefly.

Without network, huggingface_hub retries each request with backoff (about 25 s here, and
minutes where packets are dropped). Loaders ask this first and, when it says no, read only
what is already cached, which fails at once when nothing is.
"""

import threading

# One quick probe instead of huggingface_hub's five retries with backoff per file.
PROBE_TIMEOUT_S = 5.0


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether `endpoint` (default: the configured Hub) answers one HEAD request in time."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    answered = []

    def probe():
        try:
            get_session().head(endpoint or constants.ENDPOINT, timeout=timeout)
            answered.append(True)
        except Exception:  # any failure of the probe means: work from the local cache
            pass

    # A thread bounds the wait: name resolution is not covered by the request timeout.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(answered)
