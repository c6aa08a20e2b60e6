"""Bounded waits: for a condition, for threads, for the agent's log.

Every wait here has a deadline, and one that runs out fails the test saying what did not happen;
a thread still alive after its join is reported rather than ignored.
"""
import re
import threading
import time

JOIN_TIMEOUT = 10


def wait_until(condition, what, timeout=20):
    """Return once condition() holds; fail saying `what` did not happen (bounded). `what` may be a
    function, called only then, for figures measured as the wait ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what() if callable(what) else what} did not happen within {timeout} s")


def start_thread(target, *args, name=None):
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def join_all(threads, timeout=JOIN_TIMEOUT):
    """Join every thread within one shared deadline; AssertionError names any that did not end."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s: {alive}"


def in_parallel(function, count, timeout=60):
    """[function(0), ..., function(count - 1)], each called on its own thread; the first exception re-raised."""
    results = [None] * count

    def call(index):
        try:
            results[index] = (True, function(index))
        except BaseException as exc:  # handed to the caller
            results[index] = (False, exc)

    join_all([start_thread(call, i, name=f"parallel-{i}") for i in range(count)], timeout)
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]


# The agent's log.


def log_lines(agent, pattern):
    return [line for line in agent.log().splitlines() if re.search(pattern, line)]


def wait_for_log_count(agent, pattern, count, timeout=20):
    """The first `count` lines matching `pattern`, once the agent has logged that many (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(agent, pattern)
        if len(lines) >= count:
            return lines[:count]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} agent log lines match {pattern!r}:\n{agent.log()}")


def assert_logged_in_order(agent, patterns):
    """Each pattern on a later line than the one before it."""
    lines = agent.log().splitlines()
    position = 0
    for pattern in patterns:
        found = next((i for i in range(position, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"no agent log line after line {position} matches {pattern!r}:\n{agent.log()}"
        position = found + 1
