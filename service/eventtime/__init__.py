"""Event time: windows over keyed streams, driven by watermarks that travel with the data.

A record's event time is its Kafka timestamp (or what the source's `timestamp=` returns).
Each task keeps a watermark, persisted with its state, and closes windows when it passes
them; across a repartition topic the watermark travels in the records' headers and in
marker records, so window decisions depend only on the input and the checkpoint.
"""
