"""The Argo Workflows front door, for teams that run Argo without Kubeflow (docs/argo.md).

``workflows.py`` builds, with hera's models of Argo's API, a ``WorkflowTemplate`` whose ``round`` template
calls itself while the gate promotes (recursion: nothing is unrolled, so the number of rounds sets no size
on the manifest) and a ``CronWorkflow`` that runs it on a schedule. Every pod runs ``flywheel step <stage>``
or ``flywheel track`` over a workspace on the shared volume: the paths, the stage wiring, the machine checks
and the MLflow glue are the ones ``flywheel run`` uses (``flywheel.layout``, ``flywheel.loop.round_stages``,
``flywheel.machine_checks``, ``flywheel.tracking``), so this package holds none of its own. ``cli.py``:
``flywheel argo compile|submit|schedule``.
"""
