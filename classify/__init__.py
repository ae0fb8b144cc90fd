"""Prediction: the Classifier, evaluation, explanation and the served response format."""
