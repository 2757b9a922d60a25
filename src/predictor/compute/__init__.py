"""Where training's rows live and boosters are fitted: one process (``local``) or a Dask cluster (``dask``).

``train.fit_on`` is written once against ``base.Backend``; a backend only says how a customer's rows
meet, how a slice is collected or scored and how a booster is fitted on rows it holds.
"""
