"""The ``neural`` tier: the package's trained LipSyncUNet (runtime/neural/model.py).

It exists only for packages holding ``neural.safetensors`` (``lipsync-pack
train``); loading raises otherwise, and the chain then starts at ``retrieval``.
Weights are read with safetensors (no pickle). Frames of a batch, from any
sessions sharing the package, go through one forward pass under
``torch.inference_mode``; BatchNorm is folded into the convolutions and
tensors are channels-last (measured ~1.2x and ~1.4x faster on CPU). Serving
passes the base frame as the masked target; the reference is the base frame
itself, or for weights trained with ``reference = "retrieval"`` the retrieval
tier's output for the frame (its choice from the audio, with its continuity
state per session), which the network redraws onto the face.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import PackageError
from ..package import NEURAL_WEIGHTS as WEIGHTS
from ..mouth import for_package
from ..options import RenderOptions
from ..package import Package
from .base import Generator, Request
from .paste import blend, resting, transplant
from .retrieval import RetrievalGenerator



def has_weights(package: Package) -> bool:
    return (package.root / WEIGHTS).is_file()


class NeuralGenerator(Generator):
    name = "neural"

    def __init__(self, package: Package, options: RenderOptions = RenderOptions(), network=None):
        """``network``: a ``(LipSyncUNet, ModelConfig)`` to render with as it is (training's validation
        renders with the model it trains); by default the package's weights, fused for inference."""
        super().__init__(package, options)
        import torch

        from ..neural import fuse_for_inference, load_weights

        if options.threads:                      # render processes: 1 each (one process per core)
            torch.set_num_threads(options.threads)
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if network is not None:
            self.model, self.cfg = network
        else:
            if not has_weights(package):
                raise PackageError(f"{package.root}: no {WEIGHTS}; train one with `lipsync-pack train {package.root}`")
            model, self.cfg = load_weights(package.root / WEIGHTS, self.device)
            self.model = fuse_for_inference(model).to(self.device)
        if self.cfg.crop != package.crops.shape[1]:
            raise PackageError(f"{package.root / WEIGHTS}: trained for {self.cfg.crop} px crops, the package has "
                               f"{package.crops.shape[1]} px; retrain with `lipsync-pack train`")
        if options.compile and network is None:  # 1.35x faster frames on CPU, ~30 s of compiling at start
            self.model = torch.compile(self.model)
        self._torch = torch
        self.mouth = for_package(package)
        if self.cfg.shape_dim and self.cfg.shape_dim != self.mouth.components.shape[0]:
            raise PackageError(f"{package.root / WEIGHTS}: trained on {self.cfg.shape_dim} mouth-shape coefficients, "
                               f"the package's mouth model has {self.mouth.components.shape[0]}; retrain")
        # the retrieval reference: its choices, and their per-session state, are this tier's own
        self.retrieval = RetrievalGenerator(package, options) if self.cfg.reference == "retrieval" else None

    def new_state(self):
        return self.retrieval.new_state() if self.retrieval else None

    def reset(self, state) -> None:
        if self.retrieval:
            self.retrieval.reset(state)

    def references(self, requests: Sequence[Request], crops: np.ndarray) -> np.ndarray:
        """The reference crop of each request: the base crop, or the retrieval tier's output."""
        if self.retrieval is None:
            return crops
        sources = self.retrieval.pick(requests)
        return np.stack([transplant(self.package, r.base, s) for r, s in zip(requests, sources)])

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        from ..neural import prepare_inputs, to_crops

        crops = np.stack([np.asarray(self.package.crops[r.base]) for r in requests])     # (B, S, S, 3)
        mels = np.stack([r.mel for r in requests])                                        # (B, 12, 80)
        shape = None
        if self.cfg.shape_dim:
            shape = self._torch.from_numpy(self.mouth.predict(mels, restore=False)).to(self.device)
        with self._torch.inference_mode():
            refs = self.references(requests, crops)
            images, mel, _ = prepare_inputs(refs, crops, mels, self.cfg)
            pred = self.model(images.to(self.device), mel.to(self.device), shape)         # (B, 3, px, px)
        if self.retrieval:        # a residual model: its change, onto retrieval's full-resolution frame
            out = list(to_crops(pred, refs, self.cfg, change_from=images[:, :3]))
        else:
            out = list(to_crops(pred, crops, self.cfg))
        if self.retrieval:        # retrieval's pick already moved ``rest`` of the way to the resting mouth
            return out
        # a base-frame reference has no mouth of its own to rest: fade towards the resting mouth
        return [blend(o, resting(self.package, r.base), r.rest) if r.rest > 0 else o
                for o, r in zip(out, requests)]
