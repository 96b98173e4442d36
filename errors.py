"""The one exception type for user mistakes: bad config, bad paths, unreachable weights.

train.py and compare.py print its message as a single line and exit non-zero; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message names the key or path and the fix."""
