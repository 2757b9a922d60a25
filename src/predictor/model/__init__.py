"""The model: the fitted artefacts (``fitted``), the time split and evaluation."""
