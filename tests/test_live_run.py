"""The demo's live run takes a seed the fit never saw, and one the trainer accepts."""

from __future__ import annotations

from trainmap.app.live_run import unused_seed
from trainmap.trainer.train import MAX_SEED, parse_seeds


def test_the_live_seed_follows_the_demos_seeds():
    assert unused_seed(parse_seeds("0-23")) == 24


def test_the_live_seed_is_never_one_of_the_fitted_seeds():
    for text in ("5-9", "0,2,3", "0-3,7"):
        seeds = parse_seeds(text)
        assert unused_seed(seeds) not in seeds


def test_the_live_seed_stays_in_range_when_the_largest_seed_is_taken():
    seeds = parse_seeds(f"0,{MAX_SEED}")
    live = unused_seed(seeds)
    assert live == 1
    assert parse_seeds(str(live)) == [live]
