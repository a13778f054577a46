"""What the tests and the benchmarks share: stores (moto's S3 server, a fault-injecting proxy),
published models, running stages and a real serve_model, and a year of Fridays.

``tests/`` and ``benchmarks/`` both import this package and never each other. It is not
part of the pipeline (nothing under ``pipeline/`` imports it); it needs the test
environment's packages (moto for the S3 server), never pytest.
"""
