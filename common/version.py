"""The one place the daemon's version lives."""

VERSION = "v0.1.0"
