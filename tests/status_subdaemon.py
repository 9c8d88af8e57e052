"""A subdaemon for tests of common/subdaemon.py: --dev-behaviour picks how it ends."""

from __future__ import annotations

from common import subdaemon
from common.status import FailReason, FatalError


def main(sub: subdaemon.Subdaemon) -> None:
    sub.status.info("started")
    behaviour = sub.args.dev_options.get("dev-behaviour")
    if behaviour == "fatal":
        raise FatalError(FailReason.HSM_IO, "hsmd went silent")
    if behaviour == "crash":
        raise KeyError("surprise")
    if behaviour == "wait-for-master":
        sub.master.recv()  # returns only if the master sends; EOF ends the daemon
    sub.status.debug("clean exit")


if __name__ == "__main__":
    subdaemon.run("status_subdaemon", main)
