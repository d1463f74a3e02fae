"""``gridtao audit``: check the audit trail (gridtao/records/audit.py).

``gridtao audit verify FILE [FILE...]`` exits 0 and prints the record count when the hash chain
across the files is intact, 1 naming the first bad file and line when any record was edited,
removed, inserted or reordered, and 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gridtao.config.agent import Config

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_ERROR = 2


def configure_audit(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="check the hash chain of audit files (rotated files in any order)",
        description="Check the hash chain across audit files; exit 0 intact, 1 tampered, "
                    "2 unreadable.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE",
                        help="audit files, oldest first (a rotated set in order)")


def run_audit(args: argparse.Namespace, config: Config) -> int:
    """Verify each trail named: the files are grouped by the live file they belong to
    (``<name>`` and its rotated ``<name>.<12 digits>``), so two agents' trails given together
    (``audit-*.jsonl*``) are each checked on their own, not as one broken chain."""
    from gridtao.records.audit_files import live_file
    from gridtao.records.audit_verify import verify_files

    trails: dict[Path, list[str]] = {}
    for name in args.files:
        trails.setdefault(live_file(Path(name)), []).append(name)
    status = EXIT_OK
    for trail, files in trails.items():
        said = f"{trail}: " if len(trails) > 1 else ""
        try:
            result = verify_files(files)
        except OSError as e:
            print(f"gridtao: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
            return EXIT_ERROR
        if not result.ok:
            print(f"{result.file}:{result.line}: {result.reason}")
            print(f"{said}TAMPERED: {result.records} records intact before it", file=sys.stderr)
            status = EXIT_TAMPERED
            continue
        count = "file" if result.files == 1 else "files"
        print(f"{said}OK: {result.records} records in {result.files} {count}, "
              f"seq {result.first_seq}..{result.last_seq}, last hash {result.last_hash}")
        if result.starts_after is not None:
            print(f"{said}note: the chain continues from {result.starts_after} (not given: "
                  f"records before seq {result.first_seq} were not checked)")
    return status
