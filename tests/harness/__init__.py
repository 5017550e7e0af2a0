"""Test harness: a real Kafka broker for every test, topic helpers, worker processes, the oracle."""
