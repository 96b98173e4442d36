"""Console log lines that fit a terminal: `16:25:54 message`, the level only when it matters."""

import logging


class ConsoleFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        text = super().formatMessage(record)
        if record.levelno >= logging.WARNING:
            head, _, message = text.partition(" ")
            text = f"{head} {record.levelname.lower()}: {message}"
        return text
