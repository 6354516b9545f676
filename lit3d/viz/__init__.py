"""Figures and interactive views of pointmaps, training curves and localization errors."""
