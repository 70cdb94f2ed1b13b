from torchship.perf.wrk import parse

OUT = """Running 8s test @ http://127.0.0.1:8080/predictions/mlp
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.12ms    1.10ms  45.20ms   95.00%
    Req/Sec     2.56k   150.00     2.90k    70.00%
  Latency Distribution
     50%    3.08ms
     75%    3.20ms
     90%    3.42ms
     99%  850.00us
  40800 requests in 8.00s, 15.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   5100.00
Transfer/sec:      1.90MB
"""


def test_parse_wrk_output():
    r = parse(OUT)
    assert r["throughput_rps"] == 5100.0 and r["sent"] == 40800 and r["ok"] == 40795
    assert r["p50_ms"] == 3.08 and r["p90_ms"] == 3.42 and r["p99_ms"] == 0.85 and r["max_ms"] == 45.2
    assert r["failed"] == 5 + 3
