"""The baseline a TorchServe user writes first: a plain BaseHandler for mlp, JSON in and out.

Stock on purpose: one request at a time through preprocess/inference/postprocess, a Python loop
over the batch, results returned as Python objects (TorchServe JSON-encodes them with indent=2).
Only the weights loading is torchship's, because BaseHandler cannot read safetensors.
"""

import json
import os

import torch
import torchship_models
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler


class StockMLP(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        meta = json.load(open(os.path.join(model_dir, "meta.json")))
        self.model = torchship_models.build("mlp", meta["model"]["architecture"])
        self.model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.tensor(body["data"], dtype=torch.float32))
        return torch.stack(rows)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        probs = torch.softmax(data, dim=1)
        return [{"class_id": int(p.argmax()), "probabilities": p.tolist()} for p in probs]
