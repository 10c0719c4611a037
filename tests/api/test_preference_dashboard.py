"""A preference run on the dashboard: its reward accuracy and margin charted per step with their
held-out values, rewards and log-probabilities kept out of the shared evaluation chart, and the
metrics served as they were logged."""

from __future__ import annotations

from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import run_paths

from .conftest import AUTH, ApiProject


def test_a_preference_run_charts_reward_accuracy_and_margin_with_their_held_out_values(api: ApiProject) -> None:
    run = api.add_run("p", steps=4, eval_every=2)
    with MetricsLog(run_paths(run).metrics) as log:
        for step in (1, 2, 3, 4):
            log.append(
                {
                    "step": step,
                    "loss": 0.7 - 0.1 * step,
                    "reward_accuracy": 0.5 + 0.1 * step,
                    "reward_margin": 0.2 * step,
                    "reward_chosen": 0.1,
                    "logp_chosen": -20.0,
                }
            )
        for step in (0, 4):
            log.append(
                {
                    "step": step,
                    "eval_loss": 0.6,
                    "eval_reward_accuracy": 0.9 if step else 0.0,
                    "eval_reward_margin": 0.5 if step else 0.0,
                    "eval_logp_chosen": -25.0,
                    "eval_logp_accuracy": 0.6,
                    "eval_runtime": 0.1,
                }
            )
    page = api.client.get("/ui/jobs/p", headers=AUTH).text
    assert 'class="chart chart-reward-accuracy"' in page and 'class="chart chart-reward-margin"' in page
    accuracy = page.split('class="chart chart-reward-accuracy"')[1].split("</svg>")[0]
    assert 'data-series="train" data-points="4"' in accuracy
    assert accuracy.count('class="marker" data-series="eval"') == 2
    evaluation = page.split('class="chart chart-eval"')[1].split("</svg>")[0]
    assert 'data-series="logp_accuracy"' in evaluation
    assert "logp_chosen" not in evaluation and "reward_" not in evaluation
    served = api.client.get("/jobs/p/metrics", headers=AUTH).json()
    assert [r["eval_reward_accuracy"] for r in served["records"] if "eval_reward_accuracy" in r] == [0.0, 0.9]


def test_a_run_without_preference_metrics_has_no_reward_charts(api: ApiProject) -> None:
    api.add_run("a", steps=4)
    page = api.client.get("/ui/jobs/a", headers=AUTH).text
    assert "chart-reward" not in page
