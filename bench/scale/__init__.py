"""`make scale`: a simulated region of N hypervisors on one machine, measured (issue 16).

One module per part — `registration`, `routing`, `fanout`, `fanin`, `faults`, `rabbit` — over a
shared `region` (the etcd cluster, its proxy and the worker processes of `worker`); `procs` is the
harness's side of those processes, `report` a part's table and invariants, `plot` the PNG.
"""
