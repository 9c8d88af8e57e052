"""Command-line tools talking to lightningd: lightning-cli."""
