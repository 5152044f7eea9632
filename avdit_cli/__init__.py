"""avdit: joint audio-video generation with AV-DiT (a frozen image DiT shared by audio and video)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avdit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
