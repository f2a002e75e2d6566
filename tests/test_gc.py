"""Every `meter` command collects cycles rarely (`meter.cli.tune_gc`): the consumer's batches
would otherwise be walked by the collector over and over."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meter import cli


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_raises_the_young_threshold_and_freezes_what_is_alive() -> None:
    _, older, oldest = gc.get_threshold()
    cli.tune_gc()
    assert gc.get_threshold() == (cli.GC_YOUNG_THRESHOLD, older, oldest)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_main_tunes_the_collector_before_the_command_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []

    async def handler(args: object, settings: object) -> int:
        seen.append(gc.get_threshold()[0])
        return 0

    import meter.kafka
    import meter.logging

    # main's process-wide set-up, which other tests' log captures must not inherit
    monkeypatch.setattr(meter.logging, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(meter.kafka, "configure", lambda settings: None)
    monkeypatch.setattr(cli, "build_parser", _parser_with(handler))
    assert cli.main(["noop"]) == 0
    assert seen == [cli.GC_YOUNG_THRESHOLD]


def _parser_with(handler: cli.Handler) -> object:
    import argparse

    def build(chosen: str | None) -> tuple[argparse.ArgumentParser, dict[str, cli.Handler]]:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command", required=True)
        sub.add_parser("noop")
        return parser, {"noop": handler}

    return build
