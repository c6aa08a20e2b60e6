"""Where the agent's log lines go: stderr for a person at a console (--foreground), else syslog or
a size-rotated file, as [log] destination says. Set up again on SIGHUP, so a log file that was
moved away is reopened, and a new destination is taken without a restart.
"""
import errno
import logging
import os
import socket
import sys

from cra.errors import AgentError, os_error_words

LINE = "%(asctime)s %(levelname)s %(message)s"
SYSLOG_SOCKET = "/dev/log"


class LogError(AgentError):
    pass


def setup(settings, foreground, verbose):
    """Send the log to its destination; the one before is closed only once the new one is open."""
    handler, trouble = _handler(settings, foreground)
    root = logging.getLogger()
    for previous in root.handlers[:]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if trouble:
        logging.getLogger("cra.agent").warning(trouble)


def _handler(settings, foreground):
    """(handler, a warning to log once it is in place, or None)."""
    if foreground or settings.destination == "stderr":
        return _formatted(logging.StreamHandler(sys.stderr), LINE), None
    # Only for a daemon's log: under procd or systemd (--foreground) it would cost 0.4 MiB of RSS.
    from logging.handlers import RotatingFileHandler, SysLogHandler
    if settings.destination == "syslog":
        trouble = _syslog_trouble()
        if trouble:
            return (_formatted(logging.StreamHandler(sys.stderr), LINE),
                    f"syslog is not available ({SYSLOG_SOCKET}: {trouble}): logging to stderr; "
                    f"set [log] destination to a file to keep the log")
        handler = SysLogHandler(SYSLOG_SOCKET, SysLogHandler.LOG_DAEMON)
        handler.ident = f"cra-agent[{os.getpid()}]: "
        return _formatted(handler, "%(levelname)s %(message)s"), None
    path = settings.destination
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8")
    except OSError as exc:
        raise LogError(f"[log] destination: cannot write the log file {path}: {os_error_words(exc)}") from None
    return _formatted(handler, LINE), None


def _syslog_trouble():
    """Why nothing would reach syslog, or None. Asked here: since Python 3.11 SysLogHandler no longer
    says so itself, and every line would be lost."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(SYSLOG_SOCKET)
                return None
            except OSError as exc:
                if exc.errno != errno.EPROTOTYPE:
                    return os_error_words(exc)
    return "not a syslog socket"


def _formatted(handler, line):
    handler.setFormatter(logging.Formatter(line))
    return handler
