"""Local dev stack for streamseg: a real Kafka broker and Redis server without Docker.

Dev tooling only: not part of the installed distribution, and neither ``consumer`` nor ``model``
may import it. Entry points: `devstack.stack.LocalStack` and ``python -m devstack --help``.
"""
