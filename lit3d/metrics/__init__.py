"""Evaluation metrics: point errors (``pointmap``), camera localization from predicted points (``localization``),
how new a test view is (``coverage``), feature retrieval (``retrieval``) and the classical matching yardstick
(``matching``)."""
