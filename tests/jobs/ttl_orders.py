"""State with a time to live, on event time: the job the TTL tests check.

Input: JSON {"id": int, "user": str, "amount": int, "ts": ms}, keyed (so partitioned) by
user; event time is "ts", with 1 s of allowed out-of-orderness. State lives 2 s of event
time after its last write. Two outputs, key = user:

- `-p totals=TOPIC`: per order, the user's totals since the user's state last expired
  (an aggregate with ttl_ms): {"orders": int, "amount": int, "last_id": int}.
- `-p recall=TOPIC`: per order, what a process function remembers of the user (a value
  state and a map state, both with ttl_ms): {"id": int, "previous": id or null,
  "same_size": id or null, "sizes": [int]}, where "previous" is the user's previous
  order, "same_size" the last one with the same amount % 4 and "sizes" the amounts % 4
  still remembered, all as they were before this order.
"""

from eos import JSON, STRING, Job, KeyedProcessFunction, Params

TTL_MS, OUT_OF_ORDERNESS_MS = 2_000, 1_000


def add_order(totals: dict, order: dict) -> dict:
    return {"orders": totals["orders"] + 1, "amount": totals["amount"] + order["amount"], "last_id": order["id"]}


class Recall(KeyedProcessFunction):
    def open(self, ctx):
        self.previous = ctx.value_state("previous", ttl_ms=TTL_MS)
        self.by_size = ctx.map_state("by-size", ttl_ms=TTL_MS)

    def process(self, user, order, ctx):
        size = order["amount"] % 4
        yield {"id": order["id"], "previous": self.previous.get(), "same_size": self.by_size.get(size),
               "sizes": sorted(self.by_size.keys())}
        self.previous.set(order["id"])
        self.by_size.put(size, order["id"])


def build(params: Params) -> Job:
    job = Job("ttl-orders")
    orders = (job.source(params["input"], key=STRING, value=JSON, timestamp=lambda order: order["ts"],
                         max_out_of_orderness_ms=OUT_OF_ORDERNESS_MS, uid="orders")
              .key_by_record_key())
    (orders.aggregate(add_order, initial={"orders": 0, "amount": 0}, ttl_ms=TTL_MS, uid="totals")
        .sink(params["totals"], key=STRING, value=JSON, uid="totals-out"))
    orders.process(Recall, uid="recall").sink(params["recall"], key=STRING, value=JSON, uid="recall-out")
    return job
