"""Training only: the train_model stage's run and everything it alone needs (the estimators,
pooling, the p90 bound, Dask, the data contract, drift, gates and the run report).

Nothing here is imported by the service (pipeline/api/, pipeline/serve_model.py).
"""
