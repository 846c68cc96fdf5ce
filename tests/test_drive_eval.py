"""Closed-loop evaluation bookkeeping: the combined score, the table, resuming, refusing mixed settings."""

from __future__ import annotations

import json

import pytest

from genrl.config.validate import RecipeError, build
from genrl.drive.evaluate import DriveEvalRecipe, _check_settings, _episode_file, run_eval, write_table
from genrl.drive.planner import PlannerRow
from genrl.drive.score import episode_score, mean_ci

GOOD = {"collision": False, "off_road": False, "progress_m": 300.0, "min_ttc": 3.0, "speed_over_limit_share": 0.0,
        "max_abs_jerk": 1.0, "max_abs_lat_acc": 0.5, "min_acc": -1.0, "max_acc": 1.0, "mean_speed": 20.0,
        "planner_ms": 5.0}


def test_episode_score_terms():
    assert episode_score(GOOD, 300.0)["score"] == pytest.approx(1.0)
    # half the expert's progress: (5 * 0.5 + 5 + 4 + 2) / 16
    assert episode_score(GOOD, 600.0)["score"] == pytest.approx(13.5 / 16)
    # multipliers: a collision, leaving the road, or under 20 % progress zero the episode
    assert episode_score({**GOOD, "collision": True}, 300.0)["score"] == 0.0
    assert episode_score({**GOOD, "off_road": True}, 300.0)["score"] == 0.0
    assert episode_score({**GOOD, "progress_m": 50.0}, 300.0)["score"] == 0.0
    # soft terms: TTC under 0.95 s costs 5/16, discomfort 2/16, speeding a quarter of the time 1/16
    assert episode_score({**GOOD, "min_ttc": 0.5}, 300.0)["score"] == pytest.approx(11 / 16)
    assert episode_score({**GOOD, "max_abs_jerk": 5.0}, 300.0)["score"] == pytest.approx(14 / 16)
    assert episode_score({**GOOD, "min_acc": -4.5}, 300.0)["comfortable"] == 0.0
    assert episode_score({**GOOD, "speed_over_limit_share": 0.25}, 300.0)["score"] == pytest.approx(15 / 16)
    mean, ci = mean_ci([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and ci == pytest.approx(1.96 * (1 / 3) ** 0.5 / 2)


def _recipe(tmp_path, **kw) -> DriveEvalRecipe:
    data = {"kind": "drive_eval", "seeds": {"start": 100, "count": 3}, "out": str(tmp_path / "ev"),
            "rows": [{"name": "idm_expert", "planner": "idm"}, {"name": "cv", "planner": "constant_velocity"}], **kw}
    return build(DriveEvalRecipe, data, file="eval.yaml")


def _fake_episodes(out, rows, families, seeds, **over):
    for row in rows:
        for fam in families:
            for s in seeds:
                f = _episode_file(out, row, fam, s)
                f.parent.mkdir(parents=True, exist_ok=True)
                m = {**GOOD, "seed": s, **(over.get(row, {}))}
                f.write_text(json.dumps(m))


def test_table_and_resume_skips_finished_episodes(tmp_path):
    recipe = _recipe(tmp_path, families=["highway"])
    out = tmp_path / "ev"
    _fake_episodes(out, ["idm_expert"], ["highway"], [100, 101, 102])
    _fake_episodes(out, ["cv"], ["highway"], [100, 101, 102], cv={"collision": True})
    # every episode is on disk: nothing runs (no simulator needed), the table is read back
    table = run_eval(recipe, progress=False)
    assert table["rows"]["idm_expert"]["highway"]["score"] == pytest.approx(1.0)
    assert table["rows"]["cv"]["highway"]["collision_rate"] == 1.0
    assert table["rows"]["cv"]["highway"]["score"] == 0.0
    assert (out / "table.md").is_file() and "| cv | highway | 3 |" in (out / "table.md").read_text()
    # a missing episode is an error naming the row, not a silently shorter mean
    _episode_file(out, "cv", "highway", 101).unlink()
    with pytest.raises(FileNotFoundError, match="row 'cv'"):
        write_table(out, ["idm_expert", "cv"], ["highway"], [100, 101, 102])


def test_changed_settings_are_refused(tmp_path):
    out = tmp_path / "ev"
    base = {"families": ["highway"], "duration_s": 20.0, "replan_every": 1, "seed": 0, "spec": {},
            "rows": [{"name": "a", "planner": "idm"}]}
    _check_settings(out, base)
    with pytest.raises(ValueError, match="duration_s"):
        _check_settings(out, {**base, "duration_s": 10.0})
    with pytest.raises(ValueError, match="row 'a'"):
        _check_settings(out, {**base, "rows": [{"name": "a", "planner": "constant_velocity"}]})
    _check_settings(out, {**base, "rows": [{"name": "b", "planner": "idm"}]})  # a new row joins
    assert {r["name"] for r in json.loads((out / "settings.json").read_text())["rows"]} == {"a", "b"}


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match="rows"):
        _recipe(tmp_path, rows=[{"name": "cv", "planner": "constant_velocity"}])  # no expert row
    with pytest.raises(RecipeError, match="families"):
        _recipe(tmp_path, families=["highway", "roundabout-typo"])
    with pytest.raises(RecipeError, match="selector"):
        build(PlannerRow, {"name": "x", "planner": "generator", "generator": "g", "samples": 4}, file="e.yaml")
    with pytest.raises(RecipeError, match="evaluator"):
        build(PlannerRow, {"name": "x", "planner": "generator", "generator": "g", "samples": 4,
                           "selector": "evaluator"}, file="e.yaml")
