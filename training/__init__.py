"""Attrition model: labels from HR exports, point-in-time training sets, serving and skew checks."""
