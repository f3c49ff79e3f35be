"""The paper's GTK analyses (``gridfield gtk-*``), built on the :mod:`gridfield.gtk` toolkit.

One module per analysis: ``spectra`` (a), ``bound_map`` (b), ``error_maps`` (c), ``theory`` (d);
``common`` holds the model line-up and the output helpers. Importing this package does no work.
"""
