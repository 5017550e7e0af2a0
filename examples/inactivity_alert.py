"""Inactivity alert: an event-time timer per user says when a user has gone quiet.

Input: JSON {"id": int, "user": str, "amount": int}, keyed (so partitioned) by user;
each order's event time is its Kafka timestamp. Every order of a user moves that user's
timer to 30 s after it. When the stream's time (the watermark: the largest event time
seen in the user's partition) reaches the timer first, the job sends one alert, key =
user, value JSON {"user": str, "last_order_at": ms, "silent_for_ms": 30000}, Kafka
timestamp = when the silence reached 30 s. An order that arrives first cancels it.

Run it with the topics `orders-by-user` and `inactive-users` in place and
KAFKA_BOOTSTRAP_SERVERS set (200 users, event times 250 ms apart):

    eos generate --topic orders-by-user --records 1000 --users 200 --key-by-user --event-time-step 250ms
    eos run examples/inactivity_alert.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders-by-user -p output=inactive-users
"""

from eos import JSON, STRING, Job, KeyedProcessFunction, Params

SILENCE_MS = 30_000


class InactivityAlert(KeyedProcessFunction):
    def open(self, ctx):
        self.last_order_at = ctx.value_state("last_order_at")

    def process(self, user, order, ctx):
        previous = self.last_order_at.get()
        if previous is not None:
            ctx.delete_event_time_timer(previous + SILENCE_MS)
        self.last_order_at.set(ctx.timestamp)
        ctx.register_event_time_timer(ctx.timestamp + SILENCE_MS)

    def on_timer(self, user, timestamp, ctx):
        yield {"user": user, "last_order_at": timestamp - SILENCE_MS, "silent_for_ms": SILENCE_MS}


def build(params: Params) -> Job:
    job = Job("inactivity-alert")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .key_by_record_key()
        .process(InactivityAlert, uid="silence")
        .sink(params["output"], key=STRING, value=JSON, uid="alerts-out"))
    return job
