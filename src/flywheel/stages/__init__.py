"""The stages of a round: prompts, generate, vote, curate, train, evaluate, gate, one module each, and
``records`` (each stage declared once: its paths, config sections, whether it loads a model, and its call; every
door derives from it).

Each stage module has a pure core (lists of dicts in, lists of dicts out, testable by hand) and a ``run_*`` shell
that reads the input files, calls the core and writes the outputs atomically. Sub-steps that load the champion
have modules of their own: ``select`` (curate), ``ttsi`` (prompts). Methods the benchmark has not shown to help
are in ``flywheel.experimental``: process rewards (curate) and the step search (generate).
"""
