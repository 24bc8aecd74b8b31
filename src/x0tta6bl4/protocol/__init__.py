"""The x0tta6bl4 node-to-node protocol, sans-IO.

Nothing in this package imports asyncio or socket, or reads a clock: every entry point takes
``now`` (seconds, monotonic) and returns bytes to send, events and the next deadline.
"""
