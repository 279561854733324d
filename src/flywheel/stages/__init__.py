"""The six stages of a round, one module each: generate, vote, curate, train, evaluate, gate.

Each module has a pure core (lists of dicts in, lists of dicts out, testable by
hand) and a ``run_*`` shell that reads the input files, calls the core and writes
the outputs atomically.
"""
