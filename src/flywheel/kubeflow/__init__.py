"""The flywheel as Kubeflow pipelines (KFP v2): components, pipelines, and the client side of
``flywheel pipeline compile | run | schedule``.

Components are thin: each calls the same ``flywheel`` function the CLI calls on a round
directory of the run's *workspace*, a directory on a shared volume (a PVC on the cluster,
a local directory under ``kfp.local``). The round directory has the layout of ``flywheel run``
(see ``flywheel.loop``), so tracking, reports and DVC read it unchanged. Each step also
publishes typed artifacts (Dataset, Model, Metrics, ClassificationMetrics, Markdown) for
the Kubeflow UI and its lineage; models stay on the volume and their Model artifacts point there.
"""
