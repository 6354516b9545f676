"""Evaluation metrics: point errors (``pointmap``) and camera localization from predicted points (``localization``)."""
