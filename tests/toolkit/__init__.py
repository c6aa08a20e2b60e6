"""What the tests stand on, one concern a module: the real programs (programs), bounded waits
(waiting), sockets and processes' descriptors (sockets), local TCP services (servers), what sits
between the agent and its cloud (middleboxes), the platform as users and stand-ins use it
(platform), and a serial line's far end (console)."""
