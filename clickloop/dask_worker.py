"""Preload of the Dask workers that train the CTR model: ``dask worker --preload clickloop.dask_worker``.

A worker imports what its tasks need before the first one arrives. Without it the first tasks
import ``dask.dataframe`` lazily, while the worker's event loop unpickles the next task that needs
the same package: on 2026-11-28 a worker of the test cluster died on that race ("cannot import name
'DataFrame' from partially initialized module 'dask.dataframe.dask_expr' (most likely due to a
circular import)"), the scheduler removed it and the training ran on the other one.
"""

import dask.dataframe  # noqa: F401  (what the read and model-frame tasks unpickle)
import xgboost.dask  # noqa: F401  (the training tasks)

import clickloop.dask_training  # noqa: F401  (the functions the tasks call)
