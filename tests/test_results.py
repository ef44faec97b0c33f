"""Pareto fronts: construction, hypervolume, JSON round-trip and the three queries users ask."""

from __future__ import annotations

import json
import re

import pytest

from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.problem import Objective, accuracy_latency
from hwsearch.results import Candidate, ParetoFront, hypervolume, measurement_label

SPACE = ofa_mbv3_space()

# (accuracy, latency_ms): a convex front plus one dominated point.
POINTS = [(0.70, 1.0), (0.74, 1.5), (0.76, 3.0), (0.77, 6.0), (0.72, 4.0)]


def _front(points=POINTS, reference=(-0.6, 10.0)) -> ParetoFront:
    archs = SPACE.sample(0, len(points))
    candidates = [
        Candidate(arch=a, measured={"accuracy": acc, "latency_ms": lat},
                  predicted={"accuracy": acc + 0.01, "latency_ms": lat * 1.1},
                  spread={"accuracy": 0.005, "latency_ms": 0.1}, macs=200_000_000 + i,
                  params=5_000_000 + i)
        for i, (a, (acc, lat)) in enumerate(zip(archs, points))
    ]
    return ParetoFront.build(device="pixel", space_name=SPACE.name, candidates=candidates,
                             objectives=accuracy_latency(), reference_point=reference, seed=7,
                             settings={"pop_size": 10})


def test_build_keeps_only_non_dominated_points_sorted_by_accuracy():
    front = _front()
    assert [p.measured["accuracy"] for p in front.points] == [0.77, 0.76, 0.74, 0.70]


def test_hypervolume_is_the_area_dominated_up_to_the_reference_point():
    # Staircase area in (-accuracy, latency) up to (-0.6, 10), computed by hand.
    expected = (0.70 - 0.6) * (10 - 1.0) + (0.74 - 0.70) * (10 - 1.5) \
        + (0.76 - 0.74) * (10 - 3.0) + (0.77 - 0.76) * (10 - 6.0)
    assert _front().hypervolume == pytest.approx(expected)
    assert hypervolume([[0.0, 20.0]], [-0.6, 10.0]) == 0.0


def test_json_round_trip_is_exact_and_validates_against_the_space(tmp_path):
    front = _front()
    path = front.save(tmp_path / "pixel.json")
    assert ParetoFront.load(path, SPACE) == front
    assert ParetoFront.from_json(front.to_json()) == front
    data = json.loads(front.to_json())
    assert data["points"][0]["arch_key"] == front.points[0].arch.key()
    assert data["reference_point"] == [-0.6, 10.0]
    data["points"][0]["arch"]["resolution"] = 999
    with pytest.raises(ValueError, match="resolution"):
        ParetoFront.from_dict(data, SPACE)


def test_a_front_for_another_space_is_refused():
    from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space

    with pytest.raises(ValueError, match="space"):
        ParetoFront.from_json(_front().to_json(), ofa_resnet50_space())


def test_best_under_and_fastest_above():
    front = _front()
    assert front.best_under(3.0).measured["accuracy"] == 0.76
    assert front.best_under(0.5) is None
    assert front.fastest_above(0.75).measured["latency_ms"] == 3.0
    assert front.fastest_above(0.9) is None
    assert front.best_under(3.0, source="predicted").predicted["latency_ms"] <= 3.0


def test_knee_is_where_the_trade_off_bends():
    # Normalised, (0.74, 1.5) sits farthest inside the chord from (0.70, 1.0) to (0.77, 6.0).
    assert _front().knee().measured == {"accuracy": 0.74, "latency_ms": 1.5}
    assert _front(points=[(0.7, 1.0)]).knee().measured["accuracy"] == 0.7
    assert _front(points=[]).knee() is None


def test_points_keep_how_their_latency_was_measured() -> None:
    space = ofa_mbv3_space(resolutions=(160,))
    arch = space.sample(0, 1)[0]
    shaky = {"stable": False, "clock": "thread_cpu", "latency_source": "calibrated",
             "ratio_ci": 0.054}
    point = Candidate(arch=arch, measured={"accuracy": 0.9, "latency_ms": 3.0},
                      latency_conditions=shaky)
    again = Candidate.from_dict(json.loads(json.dumps(point.to_dict())), space)
    assert again.latency_conditions == shaky
    assert measurement_label(shaky) == "UNSTABLE ±5.4%, cpu"
    assert measurement_label({"stable": True, "clock": "wall"}) == "stable"
    assert measurement_label({"stable": True, "ratio_ci": 0.012, "latency_ci": 0.031}) == "stable ±3.1%"
    assert measurement_label(shaky | {"latency_ci": 0.062}) == "UNSTABLE ±6.2%, cpu"
    assert measurement_label({"stable": False, "latency_source": "median_ms"}) == "raw median"
    assert measurement_label({}) == ""
    assert Candidate(arch=arch).to_dict()["latency_conditions"] is None


def test_a_front_file_with_an_unknown_sense_is_refused():
    """'maximize' loaded, and the front's queries and knee then minimised accuracy."""
    data = json.loads(_front().to_json())
    data["objectives"][0]["sense"] = "maximize"
    with pytest.raises(ValueError, match="sense of 'accuracy' must be 'min' or 'max', got 'maximize'"):
        ParetoFront.from_dict(data)


@pytest.mark.parametrize("kind, metric, value, mention", [
    ("measured", "latency_ms", float("nan"), "measured 'latency_ms' must be a finite number, got nan"),
    ("measured", "latency_ms", float("inf"), "measured 'latency_ms' must be a finite number, got inf"),
    ("measured", "latency_ms", "3 ms", "measured 'latency_ms' must be a number, got '3 ms'"),
    ("measured", "accuracy", 5.0, "measured 'accuracy' is 5.0; accuracy is a fraction in [0, 1]"),
    ("measured", "accuracy", -0.1, "measured 'accuracy' is -0.1; accuracy is a fraction in [0, 1]"),
    ("predicted", "accuracy", float("nan"), "predicted 'accuracy' must be a finite number, got nan"),
])
def test_a_front_file_with_an_impossible_objective_value_is_refused(kind, metric, value, mention):
    """A NaN latency or an accuracy of 5.0 used to load, plot, and even be the knee."""
    front = _front()
    data = json.loads(front.to_json())
    data["points"][2][kind][metric] = value
    point = f"point 2 ({front.points[2].arch.key()}) "
    with pytest.raises(ValueError, match=re.escape(point + mention)):
        ParetoFront.from_json(json.dumps(data))


def test_fields_that_are_null_by_design_still_load():
    """Unknown MACs, a missing prediction, unknown measurement conditions and spread are not errors."""
    data = json.loads(_front().to_json())
    point = data["points"][0]
    point.update(macs=None, params=None, predicted={}, spread={},
                 latency_conditions={"stable": False, "latency_source": "median_ms", "latency_ci": None,
                                     "session_offset": None})
    data["points"][1]["predicted"] = {"accuracy": 1.004, "latency_ms": 1.2}  # an estimate may pass 1
    data["points"][1]["measured"]["params"] = float("nan")  # not an objective
    front = ParetoFront.from_json(json.dumps(data))
    assert front.points[0].macs is None and front.points[0].latency_conditions["latency_ci"] is None


def test_front_queries_use_the_fronts_own_metric_names():
    archs = SPACE.sample(0, 3)
    points = [Candidate(arch=a, measured={"top1": acc, "latency_ms@phone": lat})
              for a, (acc, lat) in zip(archs, [(0.70, 1.0), (0.74, 1.5), (0.76, 3.0)])]
    front = ParetoFront.build(device="phone", space_name=SPACE.name, candidates=points,
                              objectives=(Objective("top1", "max"), Objective("latency_ms@phone")),
                              reference_point=(-0.6, 10.0), seed=0)
    assert front.best_under(2.0).measured["top1"] == 0.74
    assert front.fastest_above(0.72).measured["latency_ms@phone"] == 1.5
    with pytest.raises(ValueError, match="latency metric 'latency_ms' is not on this front"):
        front.best_under(2.0, latency="latency_ms")


def test_the_printed_hypervolume_names_the_point_it_was_taken_against():
    """A hypervolume compares only with one taken against the same point; the CLI's title printed the figure alone."""
    from rich.console import Console

    from hwsearch.cli._fronts import front_table

    console = Console(width=400, record=True)
    console.print(front_table("pixel", _front()))
    title = console.export_text().splitlines()[0].strip()
    assert title.startswith(f"Pareto front on pixel (hypervolume {_front().hypervolume:.4g} "
                            "over accuracy ≥ 0.6, latency_ms ≤ 10)")


def test_a_front_no_subnet_entered_says_why_it_is_empty():
    """``search --budget-ms 1e-300`` printed an empty table and exited 0, saying nothing."""
    from rich.console import Console

    from hwsearch.cli._fronts import front_table

    console = Console(width=400, record=True)
    console.print(front_table("pixel", _front(points=[])))
    assert "no subnet met the run's limits (--budget-ms" in console.export_text()
    console.print(front_table("pixel", _front()))
    assert console.export_text().count("no subnet met") == 0


@pytest.mark.parametrize("field, value, mention", [
    ("device", 7, "field 'device' must be a non-empty string"),
    ("device", None, "field 'device' must be a non-empty string"),
    ("device", [1], "field 'device' must be a non-empty string"),
    ("device", {"a": 1}, "field 'device' must be a non-empty string"),
    ("device", "", "field 'device' must be a non-empty string"),
    ("space_name", 1e308, "field 'space_name' must be a non-empty string"),
    ("objectives", [], "field 'objectives' must be a non-empty list"),
    ("objectives", {}, "field 'objectives' must be a non-empty list"),
    ("objectives", ["accuracy"], "field 'objectives' item 0 must be an object"),
    ("points", "x", "field 'points' must be a list"),
    ("reference_point", "x", "field 'reference_point' must be a list of 2 numbers"),
    ("reference_point", [1.0], "field 'reference_point' must be a list of 2 numbers"),
    ("reference_point", [0.0, None], "field 'reference_point' item 1 must be a number"),
    ("reference_point", [0.0, float("inf")], "field 'reference_point' item 1 must be a finite number"),
    ("hypervolume", "0.5", "field 'hypervolume' must be a number"),
    ("seed", 1e308, "field 'seed' must be an integer"),
    ("settings", [["a", 1]], "field 'settings' must be an object"),
])
def test_a_front_file_with_an_ill_typed_field_is_refused_naming_the_field(field, value, mention):
    """Each of these loaded: a numeric device then broke the report's HTML escaping (after its
    PNG was written), a list device was unhashable, no objectives or a string reference point
    failed while the report was drawn."""
    data = json.loads(_front().to_json())
    data[field] = value
    with pytest.raises(ValueError, match=re.escape(mention)):
        ParetoFront.from_dict(data)


def test_a_front_that_is_not_an_object_is_refused():
    with pytest.raises(ValueError, match="a front must be a JSON object, got list"):
        ParetoFront.from_json("[1, 2]")


@pytest.mark.parametrize("change, mention", [
    (lambda d: d["objectives"][0].update(metric="x"), "has no value of objective 'x'"),
    (lambda d: d["points"][0].update(measured=[]), "point 0 field 'measured' must be an object"),
    (lambda d: d["points"][0].update(predicted=[1]), "point 0 field 'predicted' must be an object"),
    (lambda d: d["points"][0].update(arch=[]), "point 0 field 'arch' must be an object"),
    (lambda d: d["points"].__setitem__(0, 7), "point 0 must be an object"),
])
def test_a_point_the_report_cannot_read_is_refused_naming_it(change, mention):
    """A metric no point has, or a point's values as a list, loaded and then raised KeyError in the report."""
    data = json.loads(_front().to_json())
    change(data)
    with pytest.raises(ValueError, match=re.escape(mention)):
        ParetoFront.from_dict(data)


def test_a_front_mixing_predicted_only_points_with_measured_ones_is_refused():
    """A point added to a front file with a predicted latency of 0.001 ms and no measured one dominated every
    measured point and was the pick under every budget: measured queries fall back to predictions."""
    data = json.loads(_front().to_json())
    sneaked = {**data["points"][0], "measured": {"accuracy": 0.99},
               "predicted": {"accuracy": 0.99, "latency_ms": 0.001}}
    data["points"].append(sneaked)
    with pytest.raises(ValueError, match=r"point 4 \(.*\) has only a predicted 'latency_ms' while other points "
                                         "were measured"):
        ParetoFront.from_dict(data, SPACE)
    candidates = [Candidate.from_dict(point, SPACE) for point in data["points"]]
    with pytest.raises(ValueError, match="has only a predicted 'latency_ms'"):
        ParetoFront.build(device="pixel", space_name=SPACE.name, candidates=candidates,
                          objectives=accuracy_latency(), reference_point=(-0.6, 10.0), seed=7)
    predicted_only = [Candidate(arch=c.arch, predicted=dict(c.predicted)) for c in candidates]
    front = ParetoFront.build(device="pixel", space_name=SPACE.name, candidates=predicted_only,
                              objectives=accuracy_latency(), reference_point=(-0.6, 10.0), seed=7)
    assert front.best_under(0.01).arch == candidates[-1].arch, "a front of predictions alone is queried by them"


def test_a_front_kept_by_predictions_saves_loads_and_answers_by_them(tmp_path):
    """A library user's front kept by predictions, some of its points measured in one metric, was refused on
    load (a file build and save had made), and its queries compared measured values where there were some."""
    candidates = [Candidate(arch=arch, measured={"accuracy": 0.5} if i % 2 else {},
                            predicted={"accuracy": 0.70 + 0.02 * i, "latency_ms": 1.0 + i})
                  for i, arch in enumerate(SPACE.sample(3, 4))]
    front = ParetoFront.build(device="pixel", space_name=SPACE.name, candidates=candidates,
                              objectives=accuracy_latency(), reference_point=(-0.6, 10.0), seed=7, source="predicted")
    again = ParetoFront.load(front.save(tmp_path / "predicted.json"), SPACE)
    assert again == front and again.source == "predicted" and len(again.points) == 4
    assert again.fastest_above(0.72).arch == candidates[1].arch, "by its prediction (0.72), not its measured 0.5"
    data = json.loads(front.to_json())
    with pytest.raises(ValueError, match="field 'source' must be 'measured' or 'predicted', got 'guessed'"):
        ParetoFront.from_dict({**data, "source": "guessed"})
    with pytest.raises(ValueError, match="one kept by predictions says"):
        ParetoFront.from_dict({key: value for key, value in data.items() if key != "source"})
