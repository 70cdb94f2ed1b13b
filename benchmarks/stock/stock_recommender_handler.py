"""The baseline a TorchServe user writes first: a plain BaseHandler for recommender, JSON in and
out, one user at a time. See stock_mlp_handler.py."""

import json
import os

import torch
import torchship_models
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler


class StockRecommender(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        meta = json.load(open(os.path.join(model_dir, "meta.json")))
        self.catalog = json.load(open(os.path.join(model_dir, "catalog.json")))
        self.users = {u: i for i, u in enumerate(self.catalog["users"])}
        self.model = torchship_models.build("recommender", meta["model"]["architecture"])
        self.model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        requests = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            requests.append((self.users[str(body["user_id"])], int(body.get("k", 10))))
        return requests

    def inference(self, data, *args, **kwargs):
        out = []
        with torch.no_grad():
            for user, k in data:
                scores = self.model(torch.tensor([user]))[0]
                scores[self.catalog["seen"][user]] = float("-inf")
                out.append(torch.topk(scores, k))
        return out

    def postprocess(self, data):
        items = self.catalog["items"]
        return [
            {
                "items": [
                    {"item_id": items[i], "title": self.catalog["titles"][items[i]], "score": v}
                    for v, i in zip(top.values.tolist(), top.indices.tolist())
                ]
            }
            for top in data
        ]
