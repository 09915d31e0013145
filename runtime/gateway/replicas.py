"""Which `llm` replica serves a request: a conversation's turns go where its first turn went.

`serve --replicas N` loads N copies of the llm model under distinct names (`llm`, `llm_1`, …;
runtime/server/launcher.py). Each is its own Python stub process with its own scheduler and KV
pool, so a prefix-cache hit needs the request on the replica that already holds the blocks of its
leading tokens. Triton's own `instance_group` balancing cannot do that (it picks an instance per
request, knowing nothing of prefixes), hence distinct models and this router in the gateway.

Affinity key (`affinity_key`): what every turn of one conversation starts with.
  chat        the messages up to and including the first user message (system prompt, first
              question) plus the template variables and the media those messages carry: later
              turns append messages, so they keep the key; the rendered prompt's leading blocks
              are the same on each turn.
  completion  the first `PROMPT_KEY_CHARS` characters of the prompt (a client that re-sends a
              growing transcript keeps them once it is that long).

A key seen before goes to the replica that served it (unless that replica is `spill` requests
busier than the least busy one: then the least busy takes this request, and the key stays
pinned); a new key goes to the replica with the fewest generations in flight from this gateway,
ties to the one holding the fewest conversations, so distinct conversations spread evenly.

Limits: the table lives in this gateway's memory (bounded, least recently used keys forgotten):
a restart or a second gateway starts without it, and a conversation's next turn then lands by
load and misses the cache once. Load is what this gateway has in flight, not the replicas' own
queues. A conversation whose client rewrites its first messages gets a new key.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence

from runtime.server.wire import GenerateRequest

REPLICAS_PARAMETER = "replicas"  # the llm model's config parameter: its replicas' names, comma-separated
PROMPT_KEY_CHARS = 256  # a completion prompt's leading characters that pick its replica
REMEMBER = 65_536  # conversation keys kept (16-byte digests): least recently used are forgotten
SPILL = 8  # a pinned replica this many generations busier than the least busy one is passed over


def replica_names(model: str, replicas: int) -> tuple[str, ...]:
    """The Triton names of a model's replicas: the model itself, then `model_1`, `model_2`, …"""
    return (model, *(f"{model}_{i}" for i in range(1, replicas)))


def affinity_key(
    request: GenerateRequest, images: Sequence[bytes] = (), audios: Sequence[bytes] = ()
) -> bytes:
    """A digest of what every turn of this request's conversation begins with (see the module)."""
    digest = hashlib.blake2b(digest_size=16)
    if request.messages is None:
        digest.update(
            b"prompt\0" + (request.prompt or "")[:PROMPT_KEY_CHARS].encode("utf-8", "surrogatepass")
        )
        return digest.digest()
    head: list[dict] = []
    for message in request.messages:
        head.append(message)
        if message.get("role") == "user":
            break
    parts = [
        p for m in head if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, dict)
    ]
    media = {kind: sum(p.get("type") == kind for p in parts) for kind in ("image", "audio")}
    digest.update(json.dumps([head, request.template_kwargs], sort_keys=True, default=str).encode())
    for item in (*images[: media["image"]], *audios[: media["audio"]]):
        digest.update(hashlib.blake2b(item, digest_size=16).digest())
    return digest.digest()


class ReplicaRouter:
    """Picks a replica per generation and counts what each has in flight. Not thread-safe: one
    event loop (the gateway's) calls it."""

    def __init__(self, names: Sequence[str], remember: int = REMEMBER, spill: int = SPILL) -> None:
        if not names:
            raise ValueError("a router needs at least one replica")
        self.names = tuple(names)
        self.in_flight = dict.fromkeys(self.names, 0)
        self.conversations = dict.fromkeys(self.names, 0)  # keys pinned to each replica
        self._pinned: OrderedDict[bytes, str] = OrderedDict()
        self._remember, self._spill = remember, spill

    def acquire(self, key: bytes) -> str:
        """The replica for a request with this affinity key; `release(name)` when it has ended."""
        least = min(self.names, key=lambda n: (self.in_flight[n], self.conversations[n]))
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = self._pin(key, least)
        else:
            self._pinned.move_to_end(key)
        name = least if self.in_flight[pinned] - self.in_flight[least] >= self._spill else pinned
        self.in_flight[name] += 1
        return name

    def release(self, name: str) -> None:
        self.in_flight[name] -= 1

    def _pin(self, key: bytes, name: str) -> str:
        self._pinned[key] = name
        self.conversations[name] += 1
        if len(self._pinned) > self._remember:
            _, forgotten = self._pinned.popitem(last=False)
            self.conversations[forgotten] -= 1
        return name


def combine_stats(per_replica: dict[str, dict]) -> dict:
    """The replicas' scheduler snapshots as one: counts add up, ratios (kv_usage) are averaged
    (every replica has the same pool), anything else is the first replica's; the snapshots
    themselves are kept under "replicas"."""
    combined: dict = {}
    snapshots = list(per_replica.values())
    for key in dict.fromkeys(k for s in snapshots for k in s):
        values = [s[key] for s in snapshots if key in s]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            combined[key] = sum(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            combined[key] = sum(values) / len(values)
        else:
            combined[key] = values[0]
    combined["replicas"] = per_replica
    return combined
