"""Kafka's murmur2 hash: which partition a key's records (and so its state) belong to.

Kafka's Java producer and librdkafka's `murmur2_random` partitioner both place a keyed
record in partition `(murmur2(key bytes) & 0x7fffffff) % partitions`. Savepoints use the
same function to re-hash keyed state when a job resumes with another partition count,
so every key's state lands in the task that will receive its records. The values are
checked against the Java client (`org.apache.kafka.common.utils.Utils.murmur2`).
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit hash as Java's `Utils.murmur2` returns it (a signed int)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length // 4
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = words * 4
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def positive_murmur2(data: bytes) -> int:
    """Java's `Utils.toPositive(Utils.murmur2(data))`."""
    return murmur2(data) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key."""
    return positive_murmur2(key) % partitions
