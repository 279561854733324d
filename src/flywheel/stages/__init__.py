"""The stages of a round: prompts, generate, vote, curate, train, evaluate, gate, one module or package each, and
``records`` (each stage declared once: its paths, config sections, whether it loads a model, and its call; every
door derives from it).

Each stage has a ``run_*`` shell that reads the input files, calls the stage's rules and writes the outputs
atomically. A stage with sub-steps is a package that holds them: ``prompts/`` (``ttsi``: TT-SI's prompts like
the uncertain ones), ``vote/`` (``count``, ``weights``, ``judge``, ``labels``), ``curate/`` (``rules`` per
prompt, ``columns`` per sample, ``select``: Middo's model-informed selection), ``train/`` (``trainer``, ``sft``,
``dpo``, ``grpo``). Methods the benchmark has not shown to
help are in ``flywheel.experimental``: process rewards (curate) and the step search (generate).
"""
