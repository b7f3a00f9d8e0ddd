"""`nudgeflow journeys show`: a journey's DOT text, layers, layout, PNG and live counts."""

import dataclasses
import re
import struct
from pathlib import Path

import pytest

from jobs.cli import journeys
from jobs.cli.main import main
from udfs.catalog.files import JOURNEY_CATALOG_DIR
from udfs.journeys.compiler import parse_journey
from udfs.journeys.graph import dot_quote, edges, layers, node_lines, place, to_dot

CART = JOURNEY_CATALOG_DIR / "cart-abandonment-chain.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SPLIT_DOC = {
    "kind": "journey", "id": "ab-test", "version": 3, "description": "a split",
    "priority": {"urgency": 0.5, "expected_roi": 20, "brand_significance": 0.1},
    "nodes": [
        {"id": "start", "entry": {"trigger": {"event": "PURCHASE"}, "reentry": "always"},
         "next": "ab"},
        {"id": "ab", "split": [{"percent": 50, "next": "a"}, {"percent": 50, "next": "b"}]},
        {"id": "a", "send": {"channels": ["EMAIL", "SMS"], "template": "ta"}, "next": "wait"},
        {"id": "b", "send": {"channels": ["PUSH"], "template": "tb"}, "next": "done"},
        {"id": "wait", "wait": {"until": {"any": [{"segment": "cart-abandoners"},
                                                 {"churn_score": {"above": 0.6}}]},
                                "timeout": "90m"},
         "next": "done", "on_timeout": "done"},
        {"id": "done", "exit": {}},
    ],
}

COUNTER = "flink_taskmanager_job_task_operator_journey_node_journey_"
CART_LABELS = 'journey="cart-abandonment-chain",node='
METRICS = "\n".join([
    f"# HELP {COUNTER}sent journey_sent (scope: taskmanager_job_task_operator_journey_node)",
    f"# TYPE {COUNTER}sent gauge",
    f'{COUNTER}sent{{{CART_LABELS}"email",subtask_index="0",tm_id="tm1",}} 12.0',
    f'{COUNTER}sent{{{CART_LABELS}"email",subtask_index="1",tm_id="tm1",}} 30.0',
    # Flink's reporter rewrites label values by default: - becomes _
    f'{COUNTER}entered{{journey="cart_abandonment_chain",node="start",subtask_index="0",}} 45.0',
    f'{COUNTER}waiting{{subtask_index="0",node="wait_open",journey="cart_abandonment_chain"}} 40',
    f'{COUNTER}converted{{{CART_LABELS}"wait-day",subtask_index="0",}} 3.0',
    f'{COUNTER}exited{{{CART_LABELS}"retargeted",subtask_index="0",}} 2.5e1',
    f'{COUNTER}sent{{journey="welcome-drip",node="email",subtask_index="0",}} 99.0',
    f'{COUNTER}sent{{{CART_LABELS}"gone-in-v2",subtask_index="0",}} 7.0',
    f'{COUNTER}sent{{{CART_LABELS}"sms",subtask_index="0",}} NaN',
    f'flink_taskmanager_job_task_operator_numRecordsIn{{{CART_LABELS}"email",}} 1000.0',
    f"{COUNTER}sent 5.0",
    "",
])


@pytest.fixture(scope="module")
def cart():
    return journeys.load_journey(CART)


def dot_nodes_and_edges(dot):
    """{node id: label} and {(source, target): label} of DOT text as to_dot writes it."""
    nodes = dict(re.findall(r'^  "([^"]+)" \[label="((?:[^"\\]|\\.)*)"', dot, re.M))
    found = {}
    for source, target, label in re.findall(
            r'^  "([^"]+)" -> "([^"]+)"(?: \[label="([^"]*)"\])?;$', dot, re.M):
        found[(source, target)] = label
    return nodes, found


def test_the_dot_of_the_cart_chain_has_every_node_and_edge_with_its_label(cart) -> None:
    dot = to_dot(cart)
    assert dot.startswith('digraph "cart-abandonment-chain" {\n'
                          '  label="cart-abandonment-chain v1";')
    assert dot.endswith("}\n")
    nodes, found = dot_nodes_and_edges(dot)
    assert nodes == {
        "start": r"start\nentry: entered segment cart-abandoners\nre-entry after 1d",
        "email": r"email\nsend EMAIL cart-chain-email-v1",
        "wait-open": r"wait-open\nwait until email opened, 4h",
        "sms": r"sms\nsend SMS cart-chain-sms-v1",
        "wait-day": r"wait-day\nwait 1d",
        "converted": r"converted\nif PURCHASE since entry",
        "retarget": r"retarget\nsync audience cart-retargeting",
        "done": r"done\nexit: converted",
        "retargeted": r"retargeted\nexit: retargeted",
    }
    assert found == {
        ("start", "email"): "", ("email", "wait-open"): "",
        ("wait-open", "wait-day"): "opened", ("wait-open", "sms"): "timeout",
        ("sms", "wait-day"): "", ("wait-day", "converted"): "",
        ("converted", "done"): "then", ("converted", "retarget"): "else",
        ("retarget", "retargeted"): "",
    }
    # a shape and a fill per kind
    assert re.search(r'"converted" \[.*shape=diamond, style="filled", fillcolor="#', dot)
    assert re.search(r'"done" \[.*shape=doubleoctagon', dot)
    assert re.search(r'"email" \[.*shape=box, style="rounded,filled"', dot)


def test_the_layers_are_the_longest_paths_from_the_entry(cart) -> None:
    assert layers(cart) == [["start"], ["email"], ["wait-open"], ["sms"], ["wait-day"],
                            ["converted"], ["retarget", "done"], ["retargeted"]]
    split = parse_journey(SPLIT_DOC)
    # done is reached from b (layer 3) and from wait (layer 4): below both
    assert layers(split) == [["start"], ["ab"], ["a", "b"], ["wait"], ["done"]]


def test_splits_waits_and_nested_conditions_are_labelled() -> None:
    split = parse_journey(SPLIT_DOC)
    assert [(e.source, e.target, e.label) for e in edges(split)] == [
        ("start", "ab", ""), ("ab", "a", "50%"), ("ab", "b", "50%"), ("a", "wait", ""),
        ("b", "done", ""), ("wait", "done", "met"), ("wait", "done", "timeout")]
    assert node_lines(split.nodes["start"]) == ["start", "entry: event PURCHASE",
                                                "re-entry at once"]
    assert node_lines(split.nodes["ab"]) == ["ab", "split 2 ways"]
    assert node_lines(split.nodes["a"]) == ["a", "send EMAIL/SMS ta"]
    assert node_lines(split.nodes["wait"]) == [
        "wait", "wait until (in segment cart-abandoners or churn score >= 0.6), 1h 30m"]
    assert node_lines(split.nodes["done"]) == ["done", "exit: completed"]
    assert to_dot(split).splitlines()[1] == '  label="ab-test v3";'


def test_every_edge_points_down_and_boxes_keep_apart() -> None:
    for path in sorted(JOURNEY_CATALOG_DIR.glob("*.yaml")) + [None]:
        journey = journeys.load_journey(path) if path else parse_journey(SPLIT_DOC)
        placement = place(journey)
        assert set(placement.x) == set(journey.nodes)
        for route in placement.routes:
            rows = [placement.layer[route.edge.source], *(r for _, r in route.bends),
                    placement.layer[route.edge.target]]
            assert rows == list(range(rows[0], rows[-1] + 1)), route  # one step per layer
        for row in layers(journey):
            xs = sorted(placement.x[v] for v in row)
            assert all(b - a >= 1.0 - 1e-9 for a, b in zip(xs, xs[1:], strict=False))
    assert place(journeys.load_journey(CART)).x["email"] == place(
        journeys.load_journey(CART)).x["converted"]  # the main chain is straight


def test_labels_are_escaped_for_dot(cart) -> None:
    assert dot_quote('say "hi" \\ bye\nnext') == r'"say \"hi\" \\ bye\nnext"'
    email = cart.nodes["email"]
    quoted = dataclasses.replace(email, send=dataclasses.replace(email.send,
                                                                 template='promo "xmas"'))
    journey = dataclasses.replace(cart, nodes={**cart.nodes, "email": quoted})
    assert r'"email" [label="email\nsend EMAIL promo \"xmas\""' in to_dot(journey)


def test_counts_are_summed_per_node_over_subtasks(cart) -> None:
    counts = journeys.parse_node_counts(METRICS, cart.id, cart.nodes)
    assert counts == {
        "email": {"sent": 42.0},
        "start": {"entered": 45.0},  # the reporter's rewritten label values match too
        "wait-open": {"waiting": 40.0},
        "wait-day": {"converted": 3.0},
        "retargeted": {"exited": 25.0},
    }
    assert journeys.parse_node_counts(METRICS, "welcome-drip", ["email"]) == {
        "email": {"sent": 99.0}}
    assert journeys.parse_node_counts("", cart.id, cart.nodes) == {}
    nodes, _ = dot_nodes_and_edges(to_dot(cart, counts))
    assert nodes["email"] == r"email\nsend EMAIL cart-chain-email-v1\nsent 42"
    assert nodes["start"].endswith(r"\nentered 45")
    assert nodes["sms"] == r"sms\nsend SMS cart-chain-sms-v1"


def png_size(data):
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_png_is_written_and_is_a_png(cart, tmp_path) -> None:
    path = tmp_path / "pictures" / "cart.png"
    journeys.draw_png(cart, path, journeys.parse_node_counts(METRICS, cart.id, cart.nodes),
                      "counts from http://127.0.0.1:9249/metrics")
    data = path.read_bytes()
    width, height = png_size(data)
    assert 400 <= width <= 2000 and 800 <= height <= 3000, (width, height)  # tall: 8 layers
    assert 10_000 < len(data) < 200_000
    split = tmp_path / "split.png"
    journeys.draw_png(parse_journey(SPLIT_DOC), split)
    assert png_size(split.read_bytes())[1] < height  # 5 layers


def test_show_prints_the_dot_and_writes_the_png_here(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["journeys", "show", str(CART)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith('digraph "cart-abandonment-chain" {') and out.endswith("}\n")
    png = tmp_path / "cart-abandonment-chain.png"
    assert png_size(png.read_bytes())
    assert f"wrote the picture of cart-abandonment-chain v1 to {png}" in err

    assert main(["journeys", "show", str(CART), "--dot", str(tmp_path / "j.dot"),
                 "--out", str(tmp_path / "j.png")]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert (tmp_path / "j.dot").read_text().startswith('digraph "cart-abandonment-chain"')
    assert png_size((tmp_path / "j.png").read_bytes())


def test_show_puts_the_counts_of_a_metrics_page_in_the_dot(tmp_path, monkeypatch,
                                                           capsys) -> None:
    pages = []
    monkeypatch.setattr(journeys, "read_metrics", lambda url: pages.append(url) or METRICS)
    url = "http://127.0.0.1:9249/metrics"
    assert main(["journeys", "show", str(CART), "--out", str(tmp_path / "j.png"),
                 "--metrics", url, "--metrics", url]) == 0
    out, err = capsys.readouterr()
    assert pages == [url, url]
    assert r'"email" [label="email\nsend EMAIL cart-chain-email-v1\nsent 84"' in out  # 2 pages
    assert "counts of 5 node(s) of cart-abandonment-chain" in err


def test_show_on_an_invalid_file_prints_every_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CART.read_text().replace("next: wait-open", "next: wait-opn")
                   .replace("template: cart-chain-sms-v1", "template: cart-chain-sms-v1, "
                            "chanel: 1"))
    assert main(["journeys", "show", str(bad), "--out", str(tmp_path / "x.png")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert any(re.fullmatch(rf"{re.escape(str(bad))}:nodes\[1\]\.next: no node 'wait-opn' .*"
                            r"did you mean 'wait-open'\? \(line \d+\)", line) for line in lines)
    assert any(line.startswith(f"{bad}:nodes[3].send") and "chanel" in line for line in lines)
    assert lines[-1].endswith(f"error(s) in {bad}")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "http://127.0.0.1:1/metrics"], "cannot read the metrics at "
     "http://127.0.0.1:1/metrics"),
    (["--metrics", "file:///etc/passwd"], "is not an http(s) URL"),
])
def test_show_says_when_the_metrics_cannot_be_read(argv, message, tmp_path, capsys) -> None:
    assert main(["journeys", "show", str(CART), "--out", str(tmp_path / "x.png"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nudgeflow: error: ") and message in err
    assert "Traceback" not in err


def test_show_refuses_what_is_not_a_journey(tmp_path, capsys) -> None:
    segment = Path(JOURNEY_CATALOG_DIR.parent / "segments")
    assert main(["journeys", "show", str(segment)]) == 1
    assert "is a directory; give one journey file" in capsys.readouterr().err
    one = sorted(segment.glob("*.yaml"))[0]
    assert main(["journeys", "show", str(one), "--out", str(tmp_path / "x.png")]) == 1
    assert "not a journey" in capsys.readouterr().err
