"""cra-agent's command line: options, logging, signals and exit codes (0 clean stop, 2 bad config, 1 otherwise)."""
import argparse
import logging
import signal
import sys
import threading

from cra import __version__
from cra.agent import Agent
from cra.config import ConfigError, env_name, load

log = logging.getLogger("cra.agent")
THREAD_STACK = 256 * 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="cra-agent", description="Cloud Remote Access device agent for Cumulocity IoT.",
        epilog=f"Every option of the file can also be set in the environment, e.g. {env_name('c8y', 'password')}.")
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="the agent's INI file, e.g. /etc/cra-agent.conf")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"cra-agent: {exc}", file=sys.stderr)
        return 2
    threading.stack_size(THREAD_STACK)
    if config.poll_interval >= 30:
        log.warning("[agent] poll_interval %g s is not under the platform's 30 s operation timeout: "
                    "users' sessions may time out before the agent sees them", config.poll_interval)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    agent = Agent(config)
    crashed = []

    def poll():
        try:
            agent.run()
        except Exception:
            log.exception("the agent failed; stopping")
            crashed.append(True)
            stopping.set()

    log.info("cra-agent %s starting for device %s at %s", __version__, config.external_id, config.cloud.url)
    poller = threading.Thread(target=poll, name="poll", daemon=True)
    poller.start()
    stopping.wait()
    log.info("stopping: closing tunnels")
    agent.shutdown()
    poller.join(1)
    return 1 if crashed else 0
