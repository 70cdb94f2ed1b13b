import math

from torchship.sdk.metrics import Metrics, parse_prometheus

TEXT = """# HELP Requests4XX Torchserve prometheus counter metric with unit: Count
# TYPE Requests4XX counter
Requests4XX{Level="Host",Hostname="vm",} 1.0
ts_inference_latency_microseconds{model_name="mlp",model_version="default",hostname="vm",} 41003.2
ts_inference_latency_microseconds{model_name="mlp",model_version="2.0",hostname="vm",} 9000.0
ts_queue_latency_microseconds{model_name="mlp",model_version="default",hostname="vm",} 3000.0
ts_inference_requests_total{model_name="mlp",model_version="default",hostname="vm",} 3.0
ts_inference_requests_total{model_name="mlp",model_version="2.0",hostname="vm",} 2.0
ts_inference_requests_total{model_name="other",model_version="1",hostname="vm",} 7.0
weird{label="a \\"quoted\\" value"} 1e3
broken line without value
nolabels 42
"""


def test_parse_samples_labels_and_values():
    samples = parse_prometheus(TEXT)
    assert len(samples) == 9
    first = samples[0]
    assert (first.name, first.labels, first.value) == ("Requests4XX", {"Level": "Host", "Hostname": "vm"}, 1.0)
    weird = [s for s in samples if s.name == "weird"][0]
    assert weird.labels == {"label": 'a "quoted" value'} and weird.value == 1000.0
    assert [s for s in samples if s.name == "nolabels"][0].value == 42.0


def test_model_helpers_sum_versions_unless_asked():
    m = Metrics.from_text(TEXT)
    assert m.requests("mlp") == 5.0
    assert m.requests("mlp", "2.0") == 2.0
    assert math.isclose(m.mean_latency_ms("mlp"), (41003.2 + 9000.0) / 5 / 1000)
    assert math.isclose(m.mean_latency_ms("mlp", "2.0"), 4.5)
    assert math.isclose(m.mean_queue_ms("mlp", "default"), 1.0)
    assert math.isnan(m.mean_latency_ms("nope"))
    assert m.models() == ["mlp", "other"]
