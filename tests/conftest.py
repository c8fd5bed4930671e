"""Shared pytest setup."""

import os

# Set before anything imports TensorFlow: hides its C++ start-up noise
# (cuDNN/cuFFT registration, CPU feature notes) from test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
