"""scripts/criteo_tables.py: the Bayes paper's Criteo table counts, from tnjax's layouts."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "criteo_tables.py")
ROWS = (10_131_227, 2_202_608, 8_351_593, 5_461_306, 7_046_547)
VOCAB = ((200, 220, 250), (125, 130, 136), (200, 200, 209), (166, 175, 188), (200, 200, 200))
E = 128


def _load():
    spec = importlib.util.spec_from_file_location("criteo_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("criteo") / "tables.json"
    out = _load().main(["--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    return out


# Closed forms of bayes_paper.md sections 3 and 4.1, written out independently of tnjax.
def _ttm(v, r1, r2):
    return v[0] * 4 * r1 + r1 * v[1] * 4 * r2 + r2 * v[2] * 8


def _tt(v, r1, r2, r3):
    return v[0] * r1 + r1 * v[1] * r2 + r2 * v[2] * r3 + r3 * E


def _cp(v, r):
    return r * (sum(v) + E)


def _tucker(v, r):
    return r[0] * r[1] * r[2] * r[3] + sum(n * k for n, k in zip((*v, E), r, strict=True))


PAPER = {
    ("cp", "FR"): 1_141_597,
    ("ttm", "FR"): 1_130_048,
    ("tt", "FR"): 1_135_752,
    ("tucker", "FR"): 1_131_212,
    ("ttm", "HC"): 163_976,
    ("ttm", "LU"): 199_504,
    ("tt", "HC"): 159_529,
    ("tt", "LU"): 153_582,
    ("cp", "HC"): 570_685,
    ("cp", "LU"): 563_839,
    ("tucker", "LU"): 666_535,
    ("tucker", "HC"): 1_131_212,
}


def test_closed_forms_give_the_paper_totals():
    cp_r, tk_r = (350, 306, 333, 326, 335), (22, 20, 22, 21, 22)
    assert sum(_cp(v, r) for v, r in zip(VOCAB, cp_r, strict=True)) == PAPER["cp", "FR"]
    assert sum(_ttm(v, 16, 16) for v in VOCAB) == PAPER["ttm", "FR"]
    assert sum(_tt(v, 24, 24, 24) for v in VOCAB) == PAPER["tt", "FR"]
    assert sum(_tucker(v, (r,) * 4) for v, r in zip(VOCAB, tk_r, strict=True)) == 1_131_212
    hc = ((16, 2), (16, 2), (16, 1), (16, 1), (16, 2))  # table 11 logged [16, 0]
    assert sum(_ttm(v, *r) for v, r in zip(VOCAB, hc, strict=True)) == PAPER["ttm", "HC"]
    lu = ((23, 5, 7), (20, 3, 5), (15, 6, 4), (22, 6, 5), (23, 6, 7))
    assert sum(_tt(v, *r) for v, r in zip(VOCAB, lu, strict=True)) == PAPER["tt", "LU"]
    cp_lu = (163, 171, 161, 175, 153)  # the script's 171 for table 3
    assert sum(_cp(v, r) for v, r in zip(VOCAB, cp_lu, strict=True)) == PAPER["cp", "LU"]
    # table 2 at the equal-budget max ranks
    v2 = VOCAB[0]
    assert (_ttm(v2, 16, 16), _tt(v2, 24, 24, 24), _cp(v2, 350), _tucker(v2, (22,) * 4)) == (
        270_080,
        278_592,
        279_300,
        251_812,
    )


def test_script_counts_match_the_paper_and_the_closed_forms(result):
    assert result["dense_total"] == 4_248_739_968 == sum(r * E for r in ROWS)
    runs = {(r["format"], r["prior"]): r for r in result["runs"]}
    assert set(runs) == set(PAPER)
    for key, want in PAPER.items():
        assert runs[key]["total"] == want, key
        assert runs[key]["matches_paper"] is True
        assert runs[key]["total"] == sum(runs[key]["params"])
    closed = {"ttm": _ttm, "tt": _tt, "cp": _cp}
    for (fmt, _), run in runs.items():
        for v, ranks, n in zip(VOCAB, run["ranks"], run["params"], strict=True):
            if fmt == "tucker":
                want = _tucker(v, ranks * 4 if len(ranks) == 1 else ranks)
            elif len(ranks) == 1 and fmt != "cp":
                want = closed[fmt](v, *(ranks * (2 if fmt == "ttm" else 3)))
            else:
                want = closed[fmt](v, *ranks)
            assert n == want, (fmt, v, ranks)
    assert runs["ttm", "FR"]["params"][0] == 270_080
    assert runs["tt", "FR"]["params"][0] == 278_592
    assert runs["cp", "FR"]["params"][0] == 279_300
    assert runs["tucker", "FR"]["params"][0] == 251_812
    # the abstract: 4.2e9 -> 1.6e5 parameters, a 2.6e4x reduction (TTM + half-Cauchy)
    assert runs["ttm", "HC"]["ratio"] == 25_910


def test_final_log_variants_differ_from_the_script(result):
    variants = {(r["format"], r["prior"]): r["total"] for r in result["log_variants"]}
    assert variants == {("cp", "LU"): 559_687, ("tucker", "LU"): 530_075}


def test_whole_model_count(result):
    rest = result["rest_of_model"]
    assert rest["other_tables"] == 569_296 * E == 72_869_888
    assert rest["mlps"] == 614_529
    assert rest["whole_dense"] == 4_322_224_385
    (ttm_hc,) = [r for r in result["runs"] if (r["format"], r["prior"]) == ("ttm", "HC")]
    assert ttm_hc["whole_model"] == 73_484_417 + 163_976
    assert ttm_hc["whole_model_ratio"] == pytest.approx(58.7, abs=0.05)


def test_script_runs_from_the_command_line(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--json", str(out)],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1,130,048" in proc.stdout and "163,976" in proc.stdout and "58.7x" in proc.stdout
    assert json.loads(out.read_text())["dense_total"] == 4_248_739_968
