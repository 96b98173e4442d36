"""The one exception type for user mistakes: bad config, bad paths, unreachable weights.

train.py and compare.py print its message as a single line and exit non-zero; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message names the key or path and the fix."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error's message on one line and at most `limit` long, to quote in a UserError.

    Library errors can span lines or quote whole tensors: keep the head.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
