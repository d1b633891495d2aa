"""Clean accuracy and robust-accuracy curves."""

from vulnscope.evaluate.accuracy import accuracy, predict
from vulnscope.evaluate.robust import RobustAccuracyCurve, robust_accuracy

__all__ = ["RobustAccuracyCurve", "accuracy", "predict", "robust_accuracy"]
