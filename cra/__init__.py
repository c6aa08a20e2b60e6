"""Cloud Remote Access for Cumulocity IoT: the device agent, its local proxy and a local cloud."""

__version__ = "0.1.0"
