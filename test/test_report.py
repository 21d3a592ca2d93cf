"""The sim-finetune report: policy-alone success before and after apart from assisted
successes, the shift named, plots at any episode count."""

from __future__ import annotations

import json

import numpy as np

from drqv2_ros.demo.report import EpisodeSummary, RunRecord, write_report


def test_report_separates_policy_alone_before_after_and_assisted(tmp_path):
    rng = np.random.default_rng(0)
    rec = RunRecord(shift="real_proxy", start="ckpt",
                    policy_only_before={"success_rate": 0.0, "successes": 0, "episodes": 10},
                    policy_only_after={"success_rate": 0.3, "successes": 3, "episodes": 10})
    for i in range(150):  # many episodes: the plot must stay readable
        inter = 0.0 if i % 3 == 0 else float(rng.uniform(0.1, 0.6))
        rec.episodes.append(EpisodeSummary(i, 60, bool(i % 2), inter, 1.0))
    text, plots = write_report(rec, tmp_path)
    assert "0/10 (0%) before, 3/10 (30%) after" in text and "shift: real_proxy" in text
    data = json.loads((tmp_path / "report.json").read_text())
    alone = sum(1 for e in rec.episodes if e.success and e.intervention_rate == 0)
    assert data["successes"] == {"policy_alone": alone,
                                 "operator_assisted": 75 - alone}
    assert data["policy_only_after"]["successes"] == 3
    assert all(p.stat().st_size > 20_000 for p in plots)
    rec2 = RunRecord()
    text2, _ = write_report(rec2, tmp_path / "empty")
    assert "not measured before, not measured after" in text2
