"""The operator console: a Textual app over the same library the `reckon` CLI calls.

Screens live in tui/screens/ (one module per area), reusable widgets in tui/widgets/, and
one stylesheet in tui/app.tcss. Long work runs as jobs (rows in the workspace database)
or in thread workers, so the interface never waits on it.
"""
