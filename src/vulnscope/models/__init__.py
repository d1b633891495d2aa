"""Reference digits models, training, the weight cache, and safe model loading."""

from vulnscope.models.cache import CACHE_ENV, PRETRAINED, cache_dir, pretrained
from vulnscope.models.checks import warn_if_probabilities, warn_if_training_mode
from vulnscope.models.digits import DigitsCNN, DigitsMLP
from vulnscope.models.exported import load_exported_program
from vulnscope.models.layout import ChannelsLastConv2d
from vulnscope.models.loading import DEEP_RBM, load_model, load_state_dict_file
from vulnscope.models.normalized import Normalized
from vulnscope.models.onnx_program import load_onnx_model
from vulnscope.models.saving import save_torchscript, torchscript_metadata
from vulnscope.models.seeded import build_seeded
from vulnscope.models.state import preserved_model_state
from vulnscope.models.training import train_classifier

__all__ = [
    "CACHE_ENV",
    "DEEP_RBM",
    "PRETRAINED",
    "ChannelsLastConv2d",
    "DigitsCNN",
    "DigitsMLP",
    "Normalized",
    "build_seeded",
    "cache_dir",
    "load_exported_program",
    "load_model",
    "load_onnx_model",
    "load_state_dict_file",
    "preserved_model_state",
    "pretrained",
    "save_torchscript",
    "torchscript_metadata",
    "train_classifier",
    "warn_if_probabilities",
    "warn_if_training_mode",
]
