"""meter: asynchronous usage metering for AI products that sell seats and credits."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
