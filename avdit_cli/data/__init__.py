"""Data: media I/O through the bundled ffmpeg, clip cutting, the synthetic demo data and its sync score.

Public entry points (import from the submodules):

- ``media``: ``probe``, ``read_video``, ``read_audio`` / ``read_audio_track``, ``write_mp4``, ``MediaInfo``,
  ``MediaError``;
- ``mixdown``: ``downmix`` (any channels -> mono), ``is_silent``;
- ``clips``: ``load_clips`` (probe + read + cut, one file), ``cut_clips``, ``Clip``;
- ``synthetic``: ``make_dataset``, ``render_clip``;
- ``sync``: ``sync_score`` (``clip_events_score`` from events already found), ``shuffled_baseline``, ``mean_f1``.
"""
