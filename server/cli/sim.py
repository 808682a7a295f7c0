"""The simulation commands: ``simulate`` (the offline benchmark) and ``demo`` (the loop on a
laptop)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from server.acquisition import registry
from server.cli.common import console, err_console, friendly_errors

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.


def register(app: typer.Typer) -> None:
    """Add the simulation commands to the top-level app."""

    @app.command()
    @friendly_errors
    def simulate(
        dataset_dir: Annotated[
            Path, typer.Argument(help="webKnossos dataset with ground_truth.csv.")
        ],
        strategy: Annotated[
            str,
            typer.Option(
                help="Comma-separated acquisition strategies ("
                + ", ".join(registry.names())
                + ") and hand-feature baselines (features-random, features-uncertainty)."
            ),
        ] = ",".join(registry.names()),
        budget: Annotated[int, typer.Option(min=1, help="Labels per run.")] = 400,
        batch: Annotated[int, typer.Option(min=1, help="Labels per round.")] = 25,
        seeds: Annotated[int, typer.Option(min=1, help="Repetitions with other seeds.")] = 5,
        out: Annotated[Path, typer.Option(help="Folder for results.json and the plot.")] = Path(
            "simulation"
        ),
        quick: Annotated[bool, typer.Option("--quick", help="A tiny run (for tests).")] = False,
        workers: Annotated[
            int, typer.Option(min=0, help="Curves run side by side (0: one per CPU core).")
        ] = 0,
        candidates: Annotated[
            int | None,
            typer.Option(
                min=0,
                help="Unlabelled patches a classifier scores per round (0: every one; "
                "default 3,000).",
            ),
        ] = None,
        annotators: Annotated[
            str | None,
            typer.Option(
                help="Simulated annotators and the share of their labels that are wrong, e.g. "
                "a:0,b:0,c:0.2 (default: the ground truth labels every proposal)."
            ),
        ] = None,
        label_aggregation: Annotated[
            str | None,
            typer.Option(
                help="How several labels of a patch become one: consensus (default) or latest."
            ),
        ] = None,
    ) -> None:
        """Offline benchmark: acquisition strategies vs. random sampling, ground truth as oracle."""
        from server.errors import InvalidInput
        from server.labels.consensus import LABEL_AGGREGATIONS
        from server.labels.truth import read_truth
        from server.sim.crowd import parse_annotators
        from server.sim.replay import ORACLE
        from server.sim.simulate import SimulationConfig, quick_config, run_simulation

        read_truth(dataset_dir)  # a bad ground truth stops here, before the progress bar
        strategies = tuple(s.strip() for s in strategy.split(",") if s.strip())
        if quick:
            config = quick_config(strategies)
        else:
            config = replace(
                SimulationConfig(), strategies=strategies, budget=budget, batch=batch, seeds=seeds
            )
        if workers:
            config = replace(config, workers=workers)
        if candidates is not None:
            config = replace(config, candidates=candidates)
        if annotators is not None:
            config = replace(config, annotators=parse_annotators(annotators, reserved=ORACLE))
        if label_aggregation is not None:
            if label_aggregation not in LABEL_AGGREGATIONS:
                raise InvalidInput(
                    f"--label-aggregation {label_aggregation!r}: use "
                    + " or ".join(LABEL_AGGREGATIONS)
                )
            config = replace(config, label_aggregation=label_aggregation)
        with Progress(console=err_console) as progress:
            bar = progress.add_task("simulating", total=None)

            def report(message: str, done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total, description=message)

            results = run_simulation(dataset_dir, out_dir=out, config=config, progress=report)
        table = Table(
            "strategy", "labels to F1 0.8", "labels to F1 0.9", "final F1", "final PR-AUC"
        )
        for name, s in results["strategies"].items():
            reach = s["labels_to_f1"]
            table.add_row(
                name,
                str(reach["0.8"] or "not reached"),
                str(reach["0.9"] or "not reached"),
                f"{s['final_f1']:.3f}",
                f"{s['final_pr_auc']:.3f}",
            )
        console.print(table)
        console.print(
            f"wrote {out / 'results.json'} and {out / 'learning_curves.png'} "
            f"in {results['seconds']:.0f} s"
        )

    @app.command()
    @friendly_errors
    def demo(
        dataset: Annotated[
            Path | None,
            typer.Option(help="A webKnossos dataset with a ground_truth.csv (default: make one)."),
        ] = None,
        rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds of labelling.")] = 5,
        port: Annotated[int, typer.Option(help="Port of the API and pages.")] = 8000,
        exit_at_end: Annotated[
            bool, typer.Option("--exit", help="Stop when the rounds are done instead of serving.")
        ] = False,
        predict: Annotated[
            bool,
            typer.Option(
                help="End with a dense prediction of the whole dataset (webKnossos layers)."
            ),
        ] = True,
        results: Annotated[
            Path | None,
            typer.Option(
                help="Where to write the results (default: demo-results.json in the data dir)."
            ),
        ] = None,
    ) -> None:
        """The loop on a laptop: synthetic data, the embedded stack, a simulated annotator."""
        from server.settings import get_settings
        from server.sim.demo import run_demo

        run_demo(
            console=console,
            data_dir=get_settings().data_dir,
            dataset=dataset.resolve() if dataset else None,
            rounds=rounds,
            port=port,
            keep_serving=not exit_at_end,
            predict=predict,
            results_path=results.resolve() if results else None,
        )
