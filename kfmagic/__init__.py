"""kfmagic: the notebook is the pipeline.

`%load_ext kfmagic`, mark cells with `%%step NAME`, then `%pipeline run`. This module stays
import-light on purpose: step processes import `kfmagic.runtime` and must not pay for IPython.
"""

__version__ = "0.1.0"


def pipeline():
    """The current pipeline: the in-kernel registry that the magics write to."""
    from .registry import current_pipeline

    return current_pipeline()


def open_run(run_id):
    """Run RUN_ID, started anywhere (another kernel, the CLI): by kfmagic's id, a run of this folder's
    `.kfmagic/runs`; by the cluster's, a run of the configured Kubeflow Pipelines. Its `metrics`,
    `load(name, step=None)` and `logs(step)` work as for a run of this kernel."""
    return pipeline().open_run(run_id)


def load_ipython_extension(ipython):
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload

    unload(ipython)
