"""The jobs bundled with piblade.

Every public (non-underscore) module here declares one job with
:func:`piblade.registry.job`; :func:`piblade.registry.load_registry` imports them
all. These declaration modules must stay cheap to import: the CLI imports them to
validate parameters and the health agent imports nothing that loads Numba. The
Numba kernels live in the :mod:`jobs.kernels` subpackage and are imported only
inside task, warm-up and reduce functions, i.e. on a worker.
"""
