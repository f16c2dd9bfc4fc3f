"""The consumer engine: asyncio + aiokafka + redis.asyncio only (no Textual, no Rich).

Headless mode, the TUI and the CLI all share it; see :class:`kafkaconsole.engine.engine.Engine`
and :class:`kafkaconsole.engine.fleet.Fleet`.
"""
