"""Orders enriched with their user's country: a stream joined with a table.

The users topic is read as a table (the latest profile per user); each order meets its
user's profile as of the order's time, in the task that holds both (the orders are
keyed by user, as the profiles are, so each user's orders and profile share a
partition number). Input: orders JSON {"id": int, "user": str, "amount": int} keyed by
user; profiles JSON {"user": str, "country": str} keyed by user. Output: key = user,
the order with "country" added (None for a user without a profile).

Run it with the topics `users`, `orders` and `orders-with-country` in place (the same
number of partitions for `users` and `orders`) and KAFKA_BOOTSTRAP_SERVERS set:

    eos generate --topic users --profiles --users 50
    eos generate --topic orders --records 1000 --users 60 --key-by-user
    eos run examples/order_enrichment.py --state-dir state --checkpoint-storage "file://$PWD/checkpoints" \
        -p input=orders -p users=users -p output=orders-with-country
"""

from eos import JSON, STRING, Job, Params


def with_country(order: dict, profile: dict | None) -> dict:
    return {**order, "country": None if profile is None else profile["country"]}


def build(params: Params) -> Job:
    job = Job("order-enrichment")
    users = job.table(params["users"], key=STRING, value=JSON, uid="users")
    (job.source(params["input"], key=STRING, value=JSON, uid="orders")
        .join(users, with_country, how="left", uid="with-country")
        .sink(params["output"], key=STRING, value=JSON, uid="enriched"))
    return job
