"""Fast paths (C++/OpenMP kernels compiled on first use) behind the same signatures as the references.

See :mod:`gridfield.fast._build` for how they are built, cached and chosen (``backend=`` and
``$GRIDFIELD_FAST``). Importing this package compiles nothing.
"""

from gridfield.fast._build import FastPathUnavailable, cache_dir, check_backend, load_extension, want_fast

__all__ = ["FastPathUnavailable", "cache_dir", "check_backend", "load_extension", "want_fast"]
