"""``gridfield view CHECKPOINT``: a browser viewer for trained fields, built on viser.

One module per job: :mod:`.scenes` detects and loads a checkpoint (image, SDF or NeRF),
:mod:`.cameras` converts between viser's cameras and gridfield's (OpenGL camera-to-world, pinhole
intrinsics), :mod:`.frames` holds the pure render functions (a camera or a view in, a picture out;
tested against the tasks' own renderers without a browser), :mod:`.progressive` decides when to render
a preview and when the full resolution, :mod:`.app` wires them to a viser server and
:mod:`.command` is the CLI entry (``ViewConfig``, ``run``). Only :mod:`.app` imports viser.
"""
