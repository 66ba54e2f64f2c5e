"""What a sweep's records say: report tables, figures, sweep comparison, planner replay."""
