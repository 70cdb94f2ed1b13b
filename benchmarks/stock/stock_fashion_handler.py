"""The baseline a TorchServe user writes first: a plain BaseHandler for fashion, taking the image
as sent (PNG or JPEG bytes, decoded with PIL the way TorchServe's own VisionHandler does), the same
bytes torchship and the peers get. See stock_mlp_handler.py."""

import io
import json
import os

import numpy as np
import torch
import torchship_models
from PIL import Image
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class StockFashion(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        meta = json.load(open(os.path.join(model_dir, "meta.json")))
        self.model = torchship_models.build("fashion", meta["model"]["architecture"])
        self.model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            image = Image.open(io.BytesIO(body)).convert("L").resize((28, 28))
            images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).unsqueeze(0))
        return torch.stack(images)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        probs = torch.softmax(data, dim=1)
        return [{"label": LABELS[int(p.argmax())], "probabilities": p.tolist()} for p in probs]
