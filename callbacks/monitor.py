"""Which way a monitored metric improves."""


def monitor_mode(monitor: str) -> str:
    """`mode` for Keras' monitoring callbacks: "min" for a loss, "max" for an accuracy."""
    return "min" if monitor.endswith("loss") else "max"
