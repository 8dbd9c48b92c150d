"""The one exception type the command line turns into a single line and a non-zero exit."""


class FewstepError(Exception):
    """A user-facing error: the message names the problem and the fix, in one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what was saved and how to continue."""
