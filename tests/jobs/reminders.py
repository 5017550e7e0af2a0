"""A reminder per key, one second of processing time after the key's first record: a
processing-time timer that fires while the input is quiet.

Input `-p input=TOPIC`: key = any string, JSON {"id": int}. Output `-p output=TOPIC`: key
= the record key, {"key": str, "first_id": int}, once per key.
"""

import time

from eos import JSON, STRING, Job, KeyedProcessFunction, Params


class Reminder(KeyedProcessFunction):
    def open(self, ctx):
        self.first_id = ctx.value_state("first_id")

    def process(self, key, record, ctx):
        if self.first_id.get() is None:
            self.first_id.set(record["id"])
            ctx.register_processing_time_timer(int(time.time() * 1000) + 1_000)

    def on_timer(self, key, timestamp, ctx):
        yield {"key": key, "first_id": self.first_id.get()}


def build(params: Params) -> Job:
    job = Job("reminders")
    (job.source(params["input"], key=STRING, value=JSON, uid="records")
        .key_by_record_key()
        .process(Reminder, uid="reminder")
        .sink(params["output"], key=STRING, value=JSON, uid="reminders-out"))
    return job
