"""The dpjax benchmark suite: workloads, methods, the subprocess harness and the report.

Entry point: ``python benchmarks/run.py`` (see ``docs/benchmarks.md``).
"""
