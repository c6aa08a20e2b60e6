"""cra-cloud: a local stand-in for the Cumulocity side of Cloud Remote Access.

Never imported by the agent: it needs aiohttp, which a gateway does not have.
"""
