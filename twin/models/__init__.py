"""The twin's predictors: features, the QT baseline, RouteNet-E and the RNN baseline, their registry,
training and evaluation. TensorFlow is quiet and Keras runs on it whichever of these loads it first."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
