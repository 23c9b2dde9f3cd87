"""fastnn: neural-network training on fused AVX-512/AVX2 and CUDA kernels.

    >>> import fastnn, numpy as np
    >>> import fastnn.functional as F
    >>> F.tanh(np.linspace(-3, 3, 7, dtype=np.float32)).round(4)
    array([-0.9951, -0.964 , -0.7616,  0.    ,  0.7616,  0.964 ,  0.9951],
          dtype=float32)
"""

from . import (
    _C,
    augment,
    datasets,
    diagnostics,
    ensemble,
    functional,
    init,
    losses,
    nn,
    optim,
    preprocessing,
    random,
    recipe,
    regularization,
    schedules,
    search,
    train,  # fastnn.estimators is imported on demand (it looks for scikit-learn)
    transfer,
    validation,
)
from ._precision import get_matmul_precision, matmul_precision, set_matmul_precision
from ._runtime import (
    build_info,
    empty_cache,
    get_cpu_capability,
    get_num_threads,
    info,
    set_cpu_capability,
    set_num_threads,
)
from .parameter import Parameter
from .random import Generator, manual_seed

__version__ = _C.__version__

__all__ = [
    "__version__",
    "Generator",
    "Parameter",
    "manual_seed",
    "datasets",
    "diagnostics",
    "init",
    "losses",
    "nn",
    "optim",
    "regularization",
    "schedules",
    "search",
    "transfer",
    "train",
    "ensemble",
    "preprocessing",
    "recipe",
    "validation",
    "random",
    "augment",
    "build_info",
    "empty_cache",
    "functional",
    "get_cpu_capability",
    "get_matmul_precision",
    "matmul_precision",
    "get_num_threads",
    "info",
    "set_cpu_capability",
    "set_matmul_precision",
    "set_num_threads",
]
