"""The neural tier's model: :class:`LipSyncUNet`, its configs and its weights file.

Training lives in :mod:`toolkit.train`; this package holds only what serving
needs (torch and numpy, no toolkit imports).
"""

from .model import (SIZES, LipSyncUNet, ModelConfig, fuse_for_inference, load_weights, prepare_inputs,
                    save_weights, to_crops, to_model_pixels, weights_bytes)

__all__ = ["SIZES", "LipSyncUNet", "ModelConfig", "fuse_for_inference", "load_weights", "prepare_inputs",
           "save_weights", "to_crops", "to_model_pixels", "weights_bytes"]
