"""The preference pipeline end to end, run once: label pairs of the base generator with the rule
oracle, train a Bradley–Terry model on them, then Flow-GRPO with only that *learned* reward.

What must hold: the reward model ranks >= 90% of held-out pairs like the oracle, and RL on it raises
the oracle's own criteria (independent judge accuracy, crispness) over the base model: the learned
reward transfers, it is not only maximised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from genrl.preference.models.base import read_model_info
from tests.helpers import ROOT, train_end_to_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("learned_reward")
    cache = os.environ.get("GENRL_CACHE") or str(tmp_path_factory.getbasetemp() / "genrl_cache")
    # 50 steps instead of the recipe's 80, and 50 eval samples per digit: the CI-sized version.
    run, before, after, _ = train_end_to_end(ROOT / "recipes/flow_grpo_learned_reward.yaml", work, cache,
                                             "trainer.steps=50", "eval.n_per_prompt=50")
    return json.loads((run / "manifest.json").read_text()), before, after


def test_reward_model_agrees_with_the_oracle_on_held_out_pairs(learned_run):
    manifest, _, _ = learned_run
    model_input = next(v for k, v in manifest["inputs"].items() if k.startswith("rewards[0]:model"))
    info = read_model_info(model_input["path"])
    assert info["metrics"]["eval/accuracy"] >= 0.90, info["metrics"]
    assert info["pairs"]["eval"] >= 300  # held out: whole sampling groups the model never saw
    labels = json.loads((Path(info["data"]["data"]["path"]).parent / "labels.json").read_text())
    assert labels["kept"] == info["pairs"]["train"] + info["pairs"]["eval"]
    assert set(labels["by_rule"]) == {"prompted_digit", "crispness_gap"}
    assert labels["ties"] > 0 and labels["undecided"] > 0  # counted, not kept


def test_rl_on_the_learned_reward_improves_the_oracles_score(learned_run):
    _, before, after = learned_run
    assert after["judge_accuracy"] >= before["judge_accuracy"] + 0.05, (before, after)
    assert after["stroke_crispness"] > before["stroke_crispness"] + 0.02, (before, after)
