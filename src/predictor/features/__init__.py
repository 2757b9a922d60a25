"""Features: the one feature function (``build``) for training and scoring, and the transcript embedders."""
