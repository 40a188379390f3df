"""Commands: one function per subcommand (lint, dry-run, trace, test,
import, docs).  Each takes plain arguments, does the work through the
services below it (settings, lint, replay), and returns a report object; it
prints nothing.  The CLI renders the reports; a web workbench can call the
same functions.

A command that cannot run raises ``errors.CommandError`` (the CLI prints
each problem and exits 2); replay raising on a well-formed record is
an ``errors.InternalError`` such as
``replay.records.ReplayBug`` (exit 3).
"""
