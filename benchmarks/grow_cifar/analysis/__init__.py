"""What a sweep's records say: report tables, figures, sweep comparison, planner replay.

Every module here only reads ``out/runs/*.json`` (and ``out/progress/``); none trains.
``python -m benchmarks.grow_cifar.analysis.report OUT`` rewrites a sweep's summary.
"""
