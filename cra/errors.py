"""The agent's errors: one root for all of them, and OS errors put into words in one place, for a person
reading one log line or one failure reason."""
import os
import re
import ssl


class AgentError(Exception):
    """What the agent, cra-connect and their parts raise on purpose; anything else is a fault of ours."""


def os_error_words(exc):
    """The OS error in words ("connection reset by peer"), not the text around it: the errno on the exception,
    on the one it wraps, or only in its message (pyserial keeps it in any of the three); else the exception's
    own text. An SSL error's errno is the library's, not the OS's: its text says more."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        number = getattr(candidate, "errno", None)
        if isinstance(number, int) and not isinstance(candidate, ssl.SSLError):
            return os.strerror(number).lower()
    number = re.search(r"\[Errno (\d+)\]|\((\d+), '", str(exc))
    if number:
        return os.strerror(int(number.group(1) or number.group(2))).lower()
    return (str(exc) or type(exc).__name__).lower()
