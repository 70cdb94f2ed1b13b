"""The baseline a TorchServe user writes first: a plain BaseHandler for sentiment, JSON in and out,
one text at a time through the model. See stock_mlp_handler.py."""

import json
import os

import torch
import torchship_models
from safetensors.torch import load_file
from torchship_text import encode
from ts.torch_handler.base_handler import BaseHandler


class StockSentiment(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        meta = json.load(open(os.path.join(model_dir, "meta.json")))
        self.vocab = json.load(open(os.path.join(model_dir, "vocab.json")))
        self.model = torchship_models.build("sentiment", meta["model"]["architecture"])
        self.model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        texts = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            texts.append(torch.tensor(encode(body["text"], self.vocab["tokens"])))
        return texts

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return [self.model(ids, torch.tensor([0]))[0] for ids in data]

    def postprocess(self, data):
        out = []
        for logits in data:
            p = torch.softmax(logits, dim=0)
            out.append(
                {
                    "label": self.vocab["labels"][int(p.argmax())],
                    "probabilities": dict(zip(self.vocab["labels"], p.tolist())),
                }
            )
        return out
