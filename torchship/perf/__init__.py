"""Performance tools: load generators, load tests and the search for the fastest settings.

`load` (the Python load generator), `wrk` (the C one), `bench` (load tests and their figures), `tune` (the
fastest settings within a latency budget).
"""
