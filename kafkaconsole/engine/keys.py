"""Redis key names, in one place, so engine, CLI, API and TUI agree on the layout.

Two layouts of the same names (:func:`tagged_layout` picks one from ``[redis] mode``):

- plain (``mode = "single"`` and ``"sentinel"``, the seed's): ``<prefix>:<consumer_id>:...``
  per consumer and ``<prefix>:_fleet:...`` fleet-wide;
- tagged (``mode = "cluster"``): ``<prefix>:{<consumer_id>}:...`` and ``<prefix>:{_fleet}:...``.
  Redis Cluster hashes only the part in braces (the hash tag), so every key of one consumer
  is in one slot (its Lua scripts and MULTI blocks touch one slot, as the cluster requires)
  and consumers spread over the primaries by their ids; the fleet keys share one slot.

The state records its layout (:mod:`.state_format`): an instance of the other layout refuses
to start rather than count in keys no one else reads.

Per consumer (``<prefix>:<consumer_id>:...``, tagged ``<prefix>:{<consumer_id>}:...``):

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
- ``alert:<rule_id>`` string  the alert as JSON, present while it fires (:mod:`.alerts`)

Every per-partition field names its topic (``<topic>|<partition>``, see :func:`offset_field`),
so one consumer's state covers every topic it reads (``kafka_topics``, ``topic_pattern``) in
the same keys, and a consumer that goes from ``kafka_topic = "a"`` to ``kafka_topics = ["a",
"b"]`` keeps what it counted of ``a``: the layout did not change, nothing is migrated. Topic
names hold no ``|`` (Kafka allows letters, digits, ``.``, ``_`` and ``-``).

Fleet-wide (``<prefix>:_fleet:...``, tagged ``<prefix>:{_fleet}:...``; consumer ids cannot
start with ``_``):

- ``format``   string  the version of this layout (:mod:`kafkaconsole.engine.state_format`):
                       a change of the layout raises it, with a migration from the last one
- ``instance:<instance_id>`` string JSON status snapshot with a TTL (heartbeat)
- ``control``  pub/sub channel announcing control changes
- ``consumers`` hash   consumers defined at runtime: consumer id -> JSON of its table
                       (``kafkaconsole consumer add``, ``POST /consumers``)
- ``audit``    stream  who paused, resumed, reset, triggered, reloaded (:mod:`.audit`)
- ``reload:<request_id>`` hash  each instance's result of a fleet-wide reload (:mod:`.reload`)
- ``probe:<random>:*``  the start-up ACL check's throw-away keys (deleted, or expire in 60 s)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DISPATCH_GROUP = "dispatchers"

#: The fleet keys' name after the prefix (``{_fleet}`` in the tagged layout).
FLEET = "_fleet"


class _HasMode(Protocol):
    @property
    def mode(self) -> str: ...


def tagged_layout(redis_cfg: _HasMode) -> bool:
    """Whether ``[redis]`` uses the tagged key layout: Redis Cluster only (``mode``)."""
    return redis_cfg.mode == "cluster"


def layout_name(tagged: bool) -> str:
    """How the docs and messages name a layout."""
    return "tagged (cluster)" if tagged else "plain"


def offset_field(topic: str, partition: int) -> str:
    """The field of a topic-partition in the ``offsets`` hash (and, after ``r|``, in the
    ``window`` hash): ``<topic>|<partition>``."""
    return f"{topic}|{partition}"


@dataclass(frozen=True, slots=True)
class ConsumerKeys:
    prefix: str
    consumer_id: str
    tagged: bool = False
    """The tagged layout: ``<prefix>:{<consumer_id>}:...`` (one cluster slot per consumer)."""

    def _k(self, suffix: str) -> str:
        if self.tagged:
            return f"{self.prefix}:{{{self.consumer_id}}}:{suffix}"
        return f"{self.prefix}:{self.consumer_id}:{suffix}"

    def alert(self, rule_id: str) -> str:
        """Present, with the alert as JSON, while the rule ``rule_id`` fires."""
        return self._k(f"alert:{rule_id}")

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
    tagged: bool = False
    """The tagged layout: ``<prefix>:{_fleet}:...`` (every fleet key in one cluster slot)."""

    @property
    def base(self) -> str:
        """``<prefix>:_fleet`` (tagged: ``<prefix>:{_fleet}``), the start of every fleet key."""
        return f"{self.prefix}:{{{FLEET}}}" if self.tagged else f"{self.prefix}:{FLEET}"

    def instance(self, instance_id: str) -> str:
        return f"{self.base}:instance:{instance_id}"

    @property
    def instance_pattern(self) -> str:
        return f"{self.base}:instance:*"

    @property
    def instances(self) -> str:
        """Sorted set of the instance ids that wrote a heartbeat (score: when, epoch ms): the
        fleet finds the heartbeats without scanning the keyspace."""
        return f"{self.base}:instances"

    @property
    def format(self) -> str:
        """The version of the key layout the state is in (:mod:`.state_format`)."""
        return f"{self.base}:format"

    @property
    def control_channel(self) -> str:
        return f"{self.base}:control"

    @property
    def runtime_consumers(self) -> str:
        """Hash of the consumers defined at runtime: consumer id -> JSON of its table."""
        return f"{self.base}:consumers"

    @property
    def audit(self) -> str:
        """The capped stream of control actions (:mod:`.audit`)."""
        return f"{self.base}:audit"

    def reload(self, request_id: str) -> str:
        """Hash of the instances' results of one fleet-wide reload (:mod:`.reload`)."""
        return f"{self.base}:reload:{request_id}"

    def probe(self, token: str) -> str:
        """The start-up ACL check's throw-away keys start with this."""
        return f"{self.base}:probe:{token}"

    def other_layout(self) -> FleetKeys:
        """The same names in the other layout (to notice state written in it)."""
        return FleetKeys(self.prefix, not self.tagged)
