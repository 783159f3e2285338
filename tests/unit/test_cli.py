"""The ndt command line: JSON contract fields, helpful errors, no tracebacks."""

import json
import subprocess
import sys

import pytest

from twin.data.sim_bench import mm1_state

SMALL_STATE = {"nodes": ["s1", "s2"], "links": [{"src": "s1", "dst": "s2", "capacity": 1e7},
                                                {"src": "s2", "dst": "s1", "capacity": 1e7}],
               "traffic": [{"src": "s1", "dst": "s2", "rate": 1e6}]}


def ndt(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ndt.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_commands():
    out = ndt("--help").stdout
    for command in ("sim", "dataset", "bench", "state", "demo"):
        assert command in out


def test_sim_json_contract(tmp_path):
    path = tmp_path / "s.json"
    mm1_state(0.5).save(path)
    report = json.loads(ndt("sim", "--state", str(path), "--duration", "20", "--seed", "1", "--json").stdout)
    path0 = report["paths"][0]
    assert {"src", "dst", "delay", "jitter", "loss", "p50", "p90", "p99"} <= set(path0)
    assert path0["delay"] == pytest.approx(1 / (1250 - 625), rel=0.05)
    assert {"src", "dst", "utilization", "occupancy", "drops"} <= set(report["links"][0])


def test_bad_state_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.json"
    data = mm1_state(0.5).to_dict()
    data["links"][0]["capacity"] = -5
    path.write_text(json.dumps(data))
    proc = ndt("sim", "--state", str(path), check=False)
    assert proc.returncode == 2
    assert "link a->b: capacity must be positive" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_state_import_topohub_and_check(tmp_path):
    out = tmp_path / "abilene.json"
    ndt("state", "import", "sndlib/abilene", "-o", str(out), "--load", "0.6")
    assert "12 nodes" in ndt("state", "check", str(out)).stdout
    proc = ndt("state", "import", "nosuch/topology", "-o", str(out), check=False)
    assert proc.returncode == 2 and "topohub key" in proc.stderr


def test_import_gml(tmp_path):
    gml = tmp_path / "tiny.gml"
    gml.write_text('graph [ node [ id 0 label "x" Latitude 0 Longitude 0 ] node [ id 1 label "y" Latitude 0 Longitude 1 ]'
                   ' edge [ source 0 target 1 LinkSpeedRaw 1000000000 ] ]')
    from twin.state.topologies import load_topology

    state = load_topology(str(gml))
    assert state.nodes == ("x", "y") and state.links[0].capacity == 1e9
    assert state.links[0].prop_delay == pytest.approx(111.19e3 / 2e8, rel=1e-3)


def test_optimize_json_contract(tmp_path):
    from tests.unit.test_optimizer import two_route_state

    state, intent = tmp_path / "s.json", tmp_path / "i.yaml"
    two_route_state(load=0.95).save(state)
    intent.write_text("constraints: {max_utilization: 0.8, weight_bounds: [1, 10]}\nsearch: {max_evaluations: 60}\n")
    report = json.loads(ndt("optimize", "--state", str(state), "--intent", str(intent), "--model", "sim",
                            "--verify", "--json").stdout)
    assert report["feasible"] and report["changed_links"]
    assert {"before", "after"} <= set(report["predicted"]) and {"before", "after"} <= set(report["simulated"])
    assert len(report["weights"]) == 8
    assert report["screen"]["model"] == "qt" and report["screen"]["distinct_routings"] > 0
    intent.write_text("constraints: {max_utilization: 0.05}\nsearch: {max_evaluations: 30}\n")
    proc = ndt("optimize", "--state", str(state), "--intent", str(intent), "--model", "sim", check=False)
    assert proc.returncode == 2 and "no routing found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, words", [
    (["sim", "--state", "S", "--duration", "1e12"], "argument --duration: must be > 0 and <= 86400 s, got 1e12"),
    (["sim", "--state", "S", "--duration", "nan"], "argument --duration: expected a finite number"),
    (["sim", "--state", "S", "--seed", str(2**70)], "argument --seed: must be >= 0 and <= 4294967295"),
    (["optimize", "--state", "S", "--intent", "I", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["state", "import", "S", "-o", "/nonexistent-dir/x.json"], "its folder '/nonexistent-dir' does not exist"),
    (["state", "import", "S", "-o", "S"], "is the source itself"),
    (["state", "import", "S", "-o", "/proc/x.json"], "/proc/x.json"),
    (["state", "import", "S", "-o", "/tmp", "--load", "0.5"], "'/tmp' is a directory; name a file in it"),
    (["state", "import", "S", "-o", "x.json", "--load", "-1"], "argument --load: must be > 0 and <= 100, got -1"),
    (["state", "check", "U16"], "is UTF-16; ndt reads UTF-8"),
    (["state", "check", "DEEP"], "JSON nested too deeply"),
    (["optimize", "--state", "S", "--intent", "BOMB"], "YAML aliases (*name) are not allowed"),
    (["optimize", "--state", "S", "--intent", "TWICE"], "key 'objective' is given twice"),
    (["dataset", "generate", "--workers", "0"], "argument --workers: must be >= 1"),
    (["loop", "--load", "2"], "argument --load: must be > 0 and < 2, got 2"),
    (["loop", "--duration", "3"], "argument --duration: must be > 3 and <= 86400 s (2 s of warm-up"),
    (["calibrate", "--tune-minutes", "0"], "argument --tune-minutes: must be > 0"),
    (["controller", "--state", "S", "--ofp-port", "70000"], "argument --ofp-port: must be >= 1 and <= 65535"),
    (["controller", "--state", "S", "--metrics-addr", "999.1.1.1"], "argument --metrics-addr: expected an IP address"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--grpc", "not-an-address"],
     "gRPC address 'not-an-address': expected host:port"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--grpc", "0.0.0.0:1"],
     "beyond loopback the API needs a bearer token"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--intent", "HAPPY"], "happiness"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--intent", "I", "--probe-rate", "0"],
     "--intent needs the probes"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--intent", "I", "--model", "gpt"],
     "--model 'gpt': not one of"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--intent", "JITTER"],
     "with --model routenet: the intent bounds jitter, which the model"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--intent", "AVOID"],
     "constraints.avoid_links: s1->s9 is not a link"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--anomaly", "--probe-rate", "0"],
     "--anomaly needs the probes"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--anomaly", "--anomaly-log", "/nonexistent/a.jsonl"],
     "--anomaly-log /nonexistent/a.jsonl: no such directory"),
    (["controller", "--state", "S", "--anomaly-persistence", "0"], "argument --anomaly-persistence: must be >= 1"),
    (["controller", "--state", "S", "--raw-hours", "0.01"], "argument --raw-hours: must be >= 0.02"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--ofp-tls-cert", "S"],
     "--ofp-tls-cert and --ofp-tls-key go together"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--ofp-tls-cert", "S", "--ofp-tls-key", "S"],
     "not a PEM certificate and its private key"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--ofp-tls-ca", "S"],
     "--ofp-tls-ca needs --ofp-tls-cert"),
    (["controller", "--state", "S", "--discover", "--store", "STORE", "--retention-days", "1", "--raw-hours", "48"],
     "--raw-hours 48 is longer than --retention-days 1"),
    (["demo", "--shift", "nowhere:2"], "'nowhere' is not a node of sndlib/abilene"),
    (["demo", "--fail", "a,b,c"], "expected NODE,NODE naming a link"),
    (["dataset", "generate", "--out", "DS", "--nodes", "5-100000"], "must satisfy 3 <= min <= max <= 1000"),
    (["dataset", "generate", "--out", "DS", "--samples", "2", "--address", "127.0.0.1:1"],
     "no Ray cluster answers at 127.0.0.1:1"),
    (["whatif", "--controller", "nonsense"], "expected HOST:PORT"),
    (["whatif", "--controller", "127.0.0.1:9", "--tls-cert", "c.pem"], "need --tls-ca, the CA to trust for the server's"),
    (["whatif", "--controller", "127.0.0.1:9", "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: not a PEM CA certificate"),
    (["whatif", "--controller", "127.0.0.1:9", "--tls-ca", "S"], "not a PEM CA certificate"),
    (["whatif", "--controller", "127.0.0.1:99999"], "expected HOST:PORT"),
    (["predict", "--state", "S", "--weights", "/nonexistent-dir"], "'/nonexistent-dir': no such directory"),
    (["optimize", "--state", "S", "--intent", "EMPTY"], "empty; an intent names at least its objective"),
    (["optimize", "--state", "S", "--intent", "I", "--out", "/nonexistent-dir/o.json"], "its folder"),
    (["tails", "fit", "--data", "DS", "--plot", "/nonexistent-dir/x.png"], "its folder '/nonexistent-dir' does not exist"),
    (["dataset", "info", "DS"], "no such directory"),
    (["sim", "--state", "S", "--limit", "2"], "it goes with --datanet, not --state"),
    (["sim", "--state", "S", "--bogus"], "ndt sim: error: unrecognized arguments: --bogus"),
    (["state", "check", "TWICEJSON"], "key 'traffic' is given twice in one JSON object"),
])
def test_bad_input_is_one_line_naming_it_with_exit_2(tmp_path, argv, words):
    """Inputs that gave a traceback, a hang or a silent acceptance before 2026-12-02 (commit 4c34a60)."""
    gml = tmp_path / "s.gml"
    gml.write_text('graph [ node [ id 0 label "s1" ] node [ id 1 label "s2" ] edge [ source 0 target 1 ] ]')
    state = tmp_path / "s.json"
    state.write_text(json.dumps(SMALL_STATE))
    files = {"S": state if argv[0] != "state" or argv[1] != "import" else gml, "STORE": tmp_path / "t.db",
             "I": tmp_path / "i.yaml", "U16": tmp_path / "u16.json", "DEEP": tmp_path / "deep.json",
             "BOMB": tmp_path / "bomb.yaml", "TWICE": tmp_path / "twice.yaml", "HAPPY": tmp_path / "happy.yaml",
             "AVOID": tmp_path / "avoid.yaml", "JITTER": tmp_path / "jitter.yaml", "EMPTY": tmp_path / "empty.yaml", "DS": tmp_path / "ds"}
    files["EMPTY"].write_text("\n")
    files["TWICEJSON"] = tmp_path / "twice.json"
    files["TWICEJSON"].write_text(json.dumps(SMALL_STATE)[:-1] + ', "traffic": []}')
    files["HAPPY"].write_text("objective: {minimize: happiness}\n")
    files["AVOID"].write_text("objective: {minimize: mean_delay}\nconstraints: {avoid_links: [[s1, s9]]}\n")
    files["I"].write_text("objective: {minimize: mean_delay}\n")
    files["JITTER"].write_text("objective: {minimize: mean_delay}\n"
                               "constraints: {delay_bounds: [{src: s1, dst: s2, max_jitter: 1ms}]}\n")
    files["U16"].write_text(json.dumps(SMALL_STATE), encoding="utf-16")
    files["DEEP"].write_text("[" * 50_000 + "]" * 50_000)
    files["BOMB"].write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: &c [*b, *b]\nconstraints: {weight_bounds: *c}\n')
    files["TWICE"].write_text("objective: {minimize: mean_delay}\nobjective: {minimize: max_utilization}\n")
    proc = ndt(*[str(files.get(a, a)) for a in argv], check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert words in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
    assert not files["DS"].exists(), "a refused dataset run left its directory behind"
