"""`smtpfw workbench`: a local web application for the people who edit rules.

Edit the ruleset (and the files it includes and the lists it names) with
lint diagnostics as you type, run its tests, see what the change would do
to recorded traffic (dry-run diff), trace one session, then save and reload
the running server (docs/workbench.md).

The modules, top down:

    app       the aiohttp application: routes, static files, security
    security  the access token, Host/Origin checks, CSRF header
    files     the workspace: which files can be read and written (the
              ruleset's own folder, never outside it) and the shadow copy
              that lets the engine read unsaved text
    bridge    lint, tests, trace and "add a test" on unsaved text, through
              the same functions the `smtpfw` subcommands use
    jobs      dry-runs in a background thread, polled for progress
    reload    save's version, SIGHUP to the server, and whether it took it
"""
