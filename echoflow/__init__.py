"""echoflow: learn to recognise the apical four-chamber view in echocardiography screen captures."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("echoflow")
except PackageNotFoundError:  # Imported from a source tree that was not installed.
    __version__ = "0.0.0+unknown"
