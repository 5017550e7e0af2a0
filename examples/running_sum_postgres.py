"""Running sum per user, into PostgreSQL as well as Kafka, exactly once.

The running-sum job (examples/running_sum.py) with two more sinks, each a table the job
declares and creates if it is missing:

- `user_totals`: one row per user with the running totals, upserted (the record key, the
  user, is the table's key);
- `order_log`: one row appended per order applied, with the totals it led to, so an order
  counted twice would show as two rows.

Each task's rows are prepared at every checkpoint and committed right after the
checkpoint's Kafka commit; the server needs `max_prepared_transactions` of at least the
number of tasks writing (PostgreSQL's default, 0, is refused at start). Give the database
as a libpq connection string or URL (keep a password in PGPASSWORD or ~/.pgpass, not on
the command line). With POSTGRES_DSN set and the topics `orders` and `totals` in place:

    eos generate --topic orders --records 1000
    eos run examples/running_sum_postgres.py --state-dir state \
        --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p output=totals -p postgres="$POSTGRES_DSN"
"""

from eos import JSON, STRING, Job, Params, PostgresSink

from running_sum import add_order as add_to_totals


def add_order(totals: dict, order: dict) -> dict:
    """The running sum's totals, and the amount of the order that made them (for the log)."""
    return {**add_to_totals(totals, order), "amount": order["amount"]}


def user_totals(dsn: str, **options) -> PostgresSink:
    """One row per user, keyed by the record key (the user)."""
    return PostgresSink(dsn, "user_totals", key=["user_id"],
                        columns={"user_id": "text", "total": "bigint", "orders": "bigint", "last_id": "bigint"},
                        value=lambda t: (t["sum"], t["count"], t["last_id"]), **options)


def order_log(dsn: str, **options) -> PostgresSink:
    """One row appended per order applied."""
    return PostgresSink(dsn, "order_log", mode="insert",
                        columns={"order_id": "bigint", "user_id": "text", "amount": "bigint", "total": "bigint",
                                 "orders": "bigint"},
                        value=lambda t: (t["last_id"], t["user"], t["amount"], t["sum"], t["count"]), **options)


def build(params: Params, **options) -> Job:
    job = Job("running-sum-postgres")
    totals = (job.source(params["input"], value=JSON, uid="orders")
              .key_by(lambda order: order["user"], uid="by-user")
              .aggregate(add_order, initial={"sum": 0, "count": 0}, uid="totals"))
    totals.sink(params["output"], key=STRING, value=JSON, uid="totals-out")
    totals.sink(user_totals(params["postgres"], **options), uid="totals-db")
    totals.sink(order_log(params["postgres"], **options), uid="order-log-db")
    return job
