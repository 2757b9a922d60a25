"""Training, written once (``train.fit_on``) over the compute backends; ``cluster_train`` reads a log on a
cluster first."""
