"""Orders enriched from a global table of countries: no co-partitioning needed, the
country code comes from the order's value.

Input `-p orders=TOPIC`: JSON {"id": int, "country": str}; `-p countries=TOPIC`: key =
country code, JSON {"name": str} (any partitioning). Output `-p output=TOPIC`: {"id",
"country": name or None} (left join).
"""

from eos import JSON, STRING, Job, Params


def build(params: Params) -> Job:
    job = Job("orders-with-country")
    countries = job.global_table(params["countries"], key=STRING, value=JSON, uid="countries")
    (job.source(params["orders"], value=JSON, uid="orders")
        .join(countries, lambda order, country: {"id": order["id"], "country": country and country["name"]},
              key=lambda order: order["country"], how="left", uid="with-country")
        .sink(params["output"], value=JSON, uid="out"))
    return job
