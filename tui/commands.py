"""Command palette provider: every screen and the main action of each area."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

SCREENS = (
    ("overview", "Go to Overview", "Pack, teacher, counts, ledger status, running jobs"),
    ("runs", "Go to Runs", "Start a harness run and watch traces arrive"),
    ("traces", "Go to Traces", "Filter, read and review traces"),
    ("dataset", "Go to Dataset", "Curation funnel; build a dataset"),
    ("eval", "Go to Eval", "Run an eval; compare configurations"),
    ("train", "Go to Train", "Launch LoRA training; live loss curve"),
    ("bundles", "Go to Bundles", "Freeze, sign, verify, export, import"),
    ("ledger", "Go to Ledger", "Versions, eval history, verify, checkpoint"),
    ("help", "Go to Help", "Keys and the operator loop"),
)

# (mode, screen method, palette text, help); the method runs on that screen once shown.
ACTIONS = (
    ("runs", "action_start_run", "Start harness run", "Launch a harness.run job with the form values"),
    ("dataset", "action_build_dataset", "Build dataset", "Launch a curate job with the form values"),
    ("eval", "action_start_eval", "Run eval", "Launch an eval job with the form values"),
    ("train", "action_launch_training", "Launch training", "Launch train jobs with the form values"),
    ("train", "action_cancel_job", "Cancel training job", "Request cancellation of the selected job"),
    ("ledger", "action_verify", "Verify ledger", "Recompute every hash, root and signature"),
    ("bundles", "action_verify", "Verify bundle", "Check the selected bundle's digests and signature"),
)


class ReckonCommands(Provider):
    """Lists the console's screens and actions in the command palette."""

    def _commands(self):
        for mode, text, help_text in SCREENS:
            yield text, partial(self.app.switch_mode, mode), help_text
        for mode, method, text, help_text in ACTIONS:
            yield text, partial(self._run_on, mode, method), help_text
        yield "Refresh", self.app.action_refresh, "Reload the visible screen from the database"

    async def _run_on(self, mode: str, method: str) -> None:
        await self.app.switch_mode(mode)
        action = getattr(self.app.screen, method, None)
        if action is not None:
            result = action()
            if hasattr(result, "__await__"):
                await result

    async def discover(self) -> Hits:
        for text, callback, help_text in self._commands():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
