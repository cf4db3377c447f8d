"""``python -m flyteplugins.mlflow``: the plugin's command line. ``replay LOCATION`` sends a journal.

Exit status: 0 when everything was sent, 1 when the server could not take it (the journal is kept),
2 for a bad command line or a file that is not a journal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flyteplugins.mlflow._buffer.journal import replay
from flyteplugins.mlflow._errors import MlflowTrackingError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` when ``None``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m flyteplugins.mlflow",
        description="Tools of the flyteplugins-mlflow plugin.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sending = commands.add_parser(
        "replay",
        help="send a journal that a task left when its tracking server stayed away",
        description=(
            "Send a journal to its MLflow tracking server: every metric point, param and tag it holds, "
            "in order, then the run's final status. Replaying twice changes nothing. LOCATION is a "
            "local path or a location in Flyte's store (s3://..., gs://...), read through Flyte's "
            "storage layer. Credentials come from the usual MLflow environment variables."
        ),
    )
    sending.add_argument("location", metavar="LOCATION", help="where the journal is")
    sending.add_argument(
        "--tracking-uri", default=None, help="send to this server instead of the one the journal names"
    )
    args = parser.parse_args(argv)
    try:
        done = replay(args.location, args.tracking_uri)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MlflowTrackingError as e:
        print(f"error: the journal was not sent and is kept at {args.location}: {e}", file=sys.stderr)
        return 1
    print(
        f"replayed {args.location}: run {done.run_id}: {done.points} metric point(s), {done.params} "
        f"param(s), {done.tags} tag(s) in {done.requests} request(s); status {done.status or 'unchanged'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
