"""Part 2, routing: a client's table of the whole region (every registration, listed in pages)
— build time and memory — and the delay from a registration to the watcher's table while
registrations churn at `--churn-rate` per second."""

from __future__ import annotations

from bench.scale.procs import Worker
from bench.scale.region import Region
from bench.scale.report import Part, mib, ms


def run(region: Region) -> Part:
    o = region.opts
    part = Part("routing", f"2. routing: a client's table of the whole region ({region.mode})")
    worker = Worker("routing", **region.etcd(), expected=o.registrations)
    try:
        worker.wait_ready()
        built = worker.ask("build")
        churn = worker.ask("churn", rate=o.churn_rate, seconds=max(3.0, o.window))
    finally:
        worker.close()
    part.check(built["endpoints"] >= o.registrations,
               f"the table holds {built['endpoints']} endpoints, expected {o.registrations}")
    part.row(f"table of {built['endpoints']:,} endpoints: build", ms(built["seconds"]), "< 1 s",
             "resolver start: paged list (2,000 a page) + table")
    part.row("table memory", mib(built["python_mib"]), "< 50 MB",
             f"Python objects (tracemalloc); process RSS grew {mib(built['rss_mib'])}")
    part.row(f"watch propagation under {o.churn_rate:.0f} registrations/s",
             f"p99 {ms(churn['p99'])}", "< 100 ms",
             f"p50 {ms(churn['p50'])}, max {ms(churn['max'])}, {churn['changes']} changes; "
             "the watcher holds the whole region")
    part.check(churn["missing"] == 0 and churn["seen"] == churn["changes"],
               f"{churn['missing']} of {churn['changes']} churned registrations never reached "
               "the watcher")
    part.data.update(build=built, churn=churn)
    return part
