"""The grid tangent kernel (GTK) toolkit: exact, sparse and matrix-free kernels, spectra, the bound,
training-dynamics prediction (Theorem 1) and drift (Theorem 2). See ``docs/gtk.md``.

``gtk(field, x)`` is the convenience entry for the zoo's fields; ``gtk_fn(f, params)`` computes the
tangent kernel of any module or function ``f(params, x)``, its grids found by type (``docs/gtk_tutorial.md``).

Importing this package does no work; the paper's analyses (``gridfield gtk-*``) live in
:mod:`gridfield.analyses`.
"""

from gridfield.gtk.bound import Bound, bound, conjugate_gradient
from gridfield.gtk.drift import DriftTrace, drift
from gridfield.gtk.dynamics import Dynamics, frequency_energy, predict_dynamics
from gridfield.gtk.eigbracket import LambdaMinBracket, lambda_min_bracket
from gridfield.gtk.engine import GTK, gtk
from gridfield.gtk.fn import Implementation, KernelFn, gtk_fn
from gridfield.gtk.operator import GTKOperator
from gridfield.gtk.spectra import (
    FourierSpectrum,
    Spectrum,
    condition_number,
    effective_rank,
    eigenspectrum,
    fourier_spectrum,
    offset_sums,
)

__all__ = [
    "GTK", "GTKOperator", "Implementation", "KernelFn", "gtk_fn",
    "Bound", "DriftTrace", "Dynamics", "FourierSpectrum", "Spectrum",
    "gtk", "bound", "conjugate_gradient", "drift", "predict_dynamics", "frequency_energy",
    "eigenspectrum", "fourier_spectrum", "offset_sums", "condition_number", "effective_rank",
    "LambdaMinBracket", "lambda_min_bracket",
]
