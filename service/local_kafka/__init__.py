"""A real Apache Kafka broker fetched from Maven Central and run as a local JVM process."""

from service.local_kafka.broker import BrokerSettings, LocalBroker
from service.local_kafka.distribution import ensure_distribution, kafka_version

__all__ = ["BrokerSettings", "LocalBroker", "ensure_distribution", "kafka_version"]
