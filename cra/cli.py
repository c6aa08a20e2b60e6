"""cra-agent's command line: options, logging, signals and exit codes (0 clean stop, 2 bad config, 1 otherwise)."""
import argparse
import logging
import os
import signal
import sys
import threading

from cra import __version__, frames, logs
from cra.config import ConfigError, env_name, load
from cra.errors import os_error_words

# cra.agent and cra.check are imported once the configuration has loaded: requests alone takes a
# second to import on a small board, and a bad file must end the agent at once (the init script
# waits only that long to see whether it stayed up).

log = logging.getLogger("cra.agent")
THREAD_STACK = 256 * 1024
DEFAULT_CONFIG = "/etc/cra-agent/cra-agent.conf"
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}
PROCESS_NAME = "cra-agent"
IDLE_CHECK = 0.2  # seconds between looks for a moment with no tunnel open, once a restart is asked for


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cra-agent", description="Cloud Remote Access device agent for Cumulocity IoT.",
        epilog=f"Every option of the file can also be set in the environment, e.g. {env_name('c8y', 'password')}. "
               "SIGHUP re-reads the file and reopens the log; open tunnels stay open. SIGUSR2 restarts the agent "
               "(the same process, the program as it is now on disk) as soon as no tunnel is open.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the agent's INI file (default {DEFAULT_CONFIG})")
    parser.add_argument("--foreground", action="store_true",
                        help="log to stderr for a person reading along, not to [log] destination "
                             "(the default when standard output is a terminal)")
    parser.add_argument("--check", action="store_true",
                        help="check the file, reach the cloud, sign in, print the device id and exit (0 when all is well, 1 otherwise)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.check:
        return run_check(args.config)
    args.foreground = args.foreground or sys.stdout.isatty()
    name_process()
    try:
        config = load(args.config)
        logs.setup(config.log, args.foreground, args.verbose)
    except (ConfigError, logs.LogError) as exc:
        print(f"cra-agent: {exc}", file=sys.stderr)
        return 2
    # Only the main thread takes these, in sigwait below: a handler would run only once the main thread
    # woke up, which it does not when the kernel hands the signal to another thread (issue 13).
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    from cra.agent import Agent
    threading.stack_size(THREAD_STACK)
    warn_about(config)
    agent = Agent(config)
    crashed = []

    def run():
        try:
            agent.run()
        except Exception:
            log.exception("the agent failed; stopping")
            crashed.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    log.info("cra-agent %s starting for device %s at %s; frames masked in %s", __version__, config.external_id,
             config.cloud.url, "C (wsaccel)" if frames.XorMaskerSimple else "Python (install wsaccel for less CPU)")
    runner = threading.Thread(target=run, name="agent", daemon=True)
    runner.start()
    restart_asked = False
    while True:
        signum = next_signal(IDLE_CHECK if restart_asked else None)
        if signum == signal.SIGHUP:
            reload(agent, args)
        elif signum == signal.SIGUSR2 and not restart_asked:
            restart_asked = True
            log.info("restart asked for (SIGUSR2): as soon as no tunnel is open; open tunnels stay open and "
                     "operations are still taken meanwhile")
        elif signum in (signal.SIGTERM, signal.SIGINT):
            break
        if restart_asked and agent.stop_when_idle():
            runner.join(1)
            return restart()
    log.info("stopping: closing tunnels")
    agent.shutdown()
    runner.join(1)
    return 1 if crashed else 0


def name_process():
    """The process is called cra-agent, as when its launcher script started it, also after a restart,
    which execs the interpreter: init scripts find the agent by that name (start-stop-daemon --name)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(PROCESS_NAME)
    except OSError:  # no /proc: nothing finds processes by name there either
        pass


def next_signal(timeout):
    """The next of SIGNALS; None when `timeout` seconds pass first."""
    if timeout is None:
        return signal.sigwait(SIGNALS)
    received = signal.sigtimedwait(SIGNALS, timeout)
    return received.si_signo if received else None


def restart():
    """The same process runs the agent again, from the program on disk now (an upgrade's new code).
    Signals stay blocked across exec, so a stop sent meanwhile waits for the new agent's sigwait."""
    argv = [sys.executable, *sys.argv]
    log.info("restarting: no tunnel is open; running %s again", " ".join(argv))
    logging.shutdown()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        log.error("could not restart (%s): stopping", os_error_words(exc))
        return 1


def reload(agent, args):
    """SIGHUP: the file again, and the log reopened; a file that no longer loads leaves all as it was."""
    try:
        config = load(args.config)
        logs.setup(config.log, args.foreground, args.verbose)
    except (ConfigError, logs.LogError) as exc:
        log.error("configuration not reloaded, the agent goes on as it was: %s", exc)
        return
    warn_about(config)
    agent.reload(config)


def warn_about(config):
    if config.poll_interval >= 30:
        log.warning("[agent] poll_interval %g s is not under the platform's 30 s operation timeout: users' "
                    "sessions may time out before the agent sees them%s", config.poll_interval,
                    "" if config.operations == "polling" else " while real-time notifications are unavailable")


def run_check(path):
    from cra.check import CheckFailed, check
    try:
        print(check(load(path)))
    except (ConfigError, CheckFailed) as exc:
        print(f"cra-agent: check failed: {exc}", file=sys.stderr)
        return 1
    return 0
