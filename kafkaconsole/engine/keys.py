"""Redis key names, in one place, so engine, CLI, API and TUI agree on the layout.

Per consumer (``<prefix>:<consumer_id>:...``):

- ``events``   string  count in the open window (the seed's ``redis-cli get`` reads it)
- ``window``   hash    ``id`` (open window id), ``opened_at`` (ms, Redis TIME),
                       ``r|<topic>|<partition>`` = ``"<first> <last>"`` for the open window,
                       ``replay`` (1: it holds events read again after a seek back)
- ``stats``    hash    ``total``, ``errors``, ``filtered``, ``skipped`` (tombstones, Debezium
                       heartbeats...), ``windows``, ``discarded``, ``seeks``, ``seek_reread``
                       and ``seek_skipped`` (offsets a seek sent back over or past),
                       ``retention_lost`` (offsets deleted by retention before they were
                       counted), ``topic_resets`` (partitions counted again from their log
                       start after their topic was re-created)
- ``offsets``  hash    ``<topic>|<partition>`` -> next offset to count (the truth)
- ``history``  stream  trigger records, capped at ``history_limit``
- ``dispatch`` stream  triggers waiting for their pipeline (consumer group ``dispatchers``)
- ``runs``     hash    window id -> JSON pipeline run status
- ``control``  hash    ``paused`` (0/1), ``paused_by``, ``paused_at``; ``seek_epoch`` (raised
                       by every seek: an instance re-reads its positions before counting
                       again), ``replay|<topic>|<partition>`` (read again after a seek back
                       up to this offset) and ``replaying`` (how many such marks)
- ``dispatch_lease``   string  the instance allowed to dispatch this consumer's triggers
- ``breaker``  hash    the pipeline circuit breaker as the dispatching instance sees it
- ``lifecycle`` hash   what happened to the topics read (:mod:`.topic_lifecycle`):
                       ``reset|<topic>|<partition>`` -> JSON of a partition whose topic ends
                       below what was counted (re-created), waiting for ``accept-reset``;
                       ``lost|<topic>|<partition>`` -> offsets retention deleted uncounted;
                       ``lost_last|<topic>|<partition>`` -> ``"<first> <last> <at_ms>"``, the
                       latest such range

Every per-partition field names its topic (``<topic>|<partition>``, see :func:`offset_field`),
so one consumer's state covers every topic it reads (``kafka_topics``, ``topic_pattern``) in
the same keys, and a consumer that goes from ``kafka_topic = "a"`` to ``kafka_topics = ["a",
"b"]`` keeps what it counted of ``a``: the layout did not change, nothing is migrated. Topic
names hold no ``|`` (Kafka allows letters, digits, ``.``, ``_`` and ``-``).

Fleet-wide (``<prefix>:_fleet:...``; consumer ids cannot start with ``_``):

- ``format``   string  the version of this layout (:mod:`kafkaconsole.engine.state_format`):
                       a change of the layout raises it, with a migration from the last one
- ``instance:<instance_id>`` string JSON status snapshot with a TTL (heartbeat)
- ``control``  pub/sub channel announcing control changes
- ``consumers`` hash   consumers defined at runtime: consumer id -> JSON of its table
                       (``kafkaconsole consumer add``, ``POST /consumers``)
"""

from __future__ import annotations

from dataclasses import dataclass

DISPATCH_GROUP = "dispatchers"


def offset_field(topic: str, partition: int) -> str:
    """The field of a topic-partition in the ``offsets`` hash (and, after ``r|``, in the
    ``window`` hash): ``<topic>|<partition>``."""
    return f"{topic}|{partition}"


@dataclass(frozen=True, slots=True)
class ConsumerKeys:
    prefix: str
    consumer_id: str

    def _k(self, suffix: str) -> str:
        return f"{self.prefix}:{self.consumer_id}:{suffix}"

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def window(self) -> str:
        return self._k("window")

    @property
    def stats(self) -> str:
        return self._k("stats")

    @property
    def offsets(self) -> str:
        return self._k("offsets")

    @property
    def history(self) -> str:
        return self._k("history")

    @property
    def dispatch(self) -> str:
        return self._k("dispatch")

    @property
    def runs(self) -> str:
        return self._k("runs")

    @property
    def control(self) -> str:
        return self._k("control")

    @property
    def dispatch_lease(self) -> str:
        return self._k("dispatch_lease")

    @property
    def breaker(self) -> str:
        return self._k("breaker")

    @property
    def lifecycle(self) -> str:
        """Hash of topic lifecycle events: re-created topics waiting, retention losses."""
        return self._k("lifecycle")

    @property
    def dlq_refused(self) -> str:
        """A capped stream of the bad events even the DLQ refused (recorded, then skipped)."""
        return self._k("dlq_refused")

    def counting_keys(self) -> list[str]:
        """KEYS of the counting scripts, in the order the Lua code expects."""
        return [
            self.events,
            self.window,
            self.stats,
            self.offsets,
            self.history,
            self.dispatch,
            self.control,
        ]


@dataclass(frozen=True, slots=True)
class FleetKeys:
    prefix: str

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:_fleet:instance:{instance_id}"

    @property
    def instance_pattern(self) -> str:
        return f"{self.prefix}:_fleet:instance:*"

    @property
    def instances(self) -> str:
        """Sorted set of the instance ids that wrote a heartbeat (score: when, epoch ms): the
        fleet finds the heartbeats without scanning the keyspace."""
        return f"{self.prefix}:_fleet:instances"

    @property
    def format(self) -> str:
        """The version of the key layout the state is in (:mod:`.state_format`)."""
        return f"{self.prefix}:_fleet:format"

    @property
    def control_channel(self) -> str:
        return f"{self.prefix}:_fleet:control"

    @property
    def runtime_consumers(self) -> str:
        """Hash of the consumers defined at runtime: consumer id -> JSON of its table."""
        return f"{self.prefix}:_fleet:consumers"
