"""Prepare stage: index the configured data source (images, labels, annotations, notes)."""
import argparse
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.schema import write_index
from assurexray.data.sources import prepare_source
from assurexray.params import load_params

log = logging.getLogger("prepare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "raw", "index", "notes", "info"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    index, notes, info = prepare_source(load_params(args.params), args.raw)
    for path in (args.index, args.notes, args.info):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_index(index, args.index)
    notes.to_csv(args.notes, index=False)
    info.save(args.info)
    log.info("source %s: %d images (%s), %d with ingest issues, %d ingest notes", info.source,
             len(index), index["label"].replace("", "no label").value_counts().to_dict(),
             (index["ingest_issue"] != "").sum(), len(notes))


if __name__ == "__main__":
    run_main(main)
