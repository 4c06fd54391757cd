"""The ``lowbit`` command line: formats, info, explain, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.formats import PRESETS

ALL_PRESETS = [p for group in PRESETS.values() for p in group]
REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_formats_lists_every_preset_family_and_rounding_mode(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich may shorten cells in a narrow terminal
    code, out, err = run(capsys, "formats")
    assert code == 0 and err == ""
    for spec in ALL_PRESETS:
        assert spec in out, f"{spec} missing from `lowbit formats`"
    for family in PRESETS:
        assert family in out
    assert "nearest_even" in out and "stochastic" in out
    assert "posit<n>_es<es>" in out


def test_info_e4m3fn_shows_bits_bias_max_and_value_count(capsys):
    code, out, err = run(capsys, "info", "e4m3fn")
    assert code == 0 and err == ""
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    assert "448.0" in lines["max"]
    assert lines["bits"].split()[-1] == "8"
    assert lines["bias"].split()[-1] == "7"
    assert lines["num values"].split()[-1] == "253"
    assert "0.001953125" in lines["min positive"]


@pytest.mark.parametrize(
    "spec,facts",
    [
        ("posit8_es2", {"max": 16777216.0, "num_values": 255}),
        ("fp16", {"spec": "e5m10", "max": 65504.0}),
        ("int8n", {"min": -127.0}),
    ],
)
def test_info_json_is_the_card_with_hand_typed_facts(capsys, spec, facts):
    code, out, _ = run(capsys, "info", spec, "--json")
    assert code == 0
    card = json.loads(out)
    for k, v in facts.items():
        assert card[k] == v


def test_explain_minus_5_75_fp32_prints_the_ieee_bit_fields(capsys):
    code, out, err = run(capsys, "explain", "-5.75", "fp32")
    assert code == 0 and err == ""
    assert "1 10000001 01110000000000000000000" in out
    assert "0xc0b80000" in out
    assert "rounds to -5.75" in out


def test_explain_minus_5_int8_prints_sign_magnitude_ones_and_twos_complement(capsys):
    code, out, _ = run(capsys, "explain", "-5", "int8")
    assert code == 0
    rows = {" ".join(line.split()[:-1]): line.split()[-1] for line in out.splitlines() if line.strip()}
    assert rows["sign-magnitude"] == "10000101"
    assert rows["ones' complement"] == "11111010"
    assert rows["two's complement"] == "11111011"


def test_explain_3_in_posit8_es2_shows_regime_exponent_and_fraction(capsys):
    # 3 = 2^(0·4 + 1) × 1.5: sign 0, regime 10 (k = 0), exponent 01, fraction 100 -> 0x4c
    code, out, _ = run(capsys, "explain", "3.0", "posit8_es2")
    assert code == 0
    assert "0 10 01 100" in out and "0x4c" in out
    fields = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if len(line.split()) > 1}
    assert fields["sign"] == "0"
    assert fields["regime"] == "10"
    assert fields["exponent"] == "01"
    assert fields["fraction"] == "100"
    assert "k = 0" in out and "rounds to 3.0" in out


def test_explain_with_a_rounding_mode(capsys):
    code, out, _ = run(capsys, "explain", "2.5", "int8", "--rounding", "nearest_away")
    assert code == 0 and "rounds to 3.0" in out and "nearest_away" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["info", "bogus"], "unknown format spec 'bogus'"),
        (["info", "posit8"], "posit8_es2"),
        (["explain", "1.0", "e4m3x"], "Valid forms"),
        (["explain", "abc", "fp32"], "VALUE must be a number"),
        (["info", "posit33_es2"], "2 <= n <= 32"),
    ],
)
def test_bad_input_exits_2_with_the_message_on_stderr(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert needle in err and err.startswith(f"lowbit {argv[0]}: error:")


def test_unknown_command_and_bad_rounding_exit_2_via_argparse(capsys):
    for argv in (["frobnicate"], ["explain", "1", "fp32", "--rounding", "sideways"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert capsys.readouterr().err


def test_python_dash_m_lowbit_formats_runs_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "lowbit", "formats"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "posit8_es2" in proc.stdout and "e4m3fn" in proc.stdout and "int8n" in proc.stdout


def test_explain_nan_in_a_posit_shows_NaR(capsys):
    code, out, _ = run(capsys, "explain", "nan", "posit8_es2")
    assert code == 0 and "10000000" in out and "NaR" in out and "0x80" in out


@pytest.mark.parametrize("value,pattern", [("-1e-3", "1 00101 0000011001"), ("-inf", "1 11111 0000000000")])
def test_explain_accepts_negative_values_in_exponent_notation_and_minus_inf(capsys, value, pattern):
    try:
        code = main(["explain", value, "fp16"])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    assert pattern in out


@pytest.mark.parametrize("argv", [
    ["explain", "-0.3", "fixed8_f4", "--rounding", "toward_zero"],
    ["explain", "-0.3", "fixed8_f4", "--rounding=toward_zero"],
    ["explain", "--rounding", "toward_zero", "-0.3", "fixed8_f4"],
    ["explain", "-3e-1", "fixed8_f4", "--rounding", "toward_zero"],
])
def test_explain_takes_options_before_or_after_a_negative_value(capsys, argv):
    # -0.3 toward zero in fixed8_f4 (steps of 1/16) is -0.25, nearest-even would give -0.3125
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "rounds to -0.25" in out


def test_pack_reads_a_lowbit_checkpoint_and_packs_its_values_again(capsys, tmp_path):
    # a lowbit checkpoint as input: its decoded values (checksums verified), not its raw code bytes
    import torch

    import lowbit as lb

    torch.save({"fc.weight": torch.randn(6, 8), "fc.bias": torch.randn(6)}, tmp_path / "w.pt")
    first, second = tmp_path / "a.lowbit", tmp_path / "b.lowbit"
    assert run(capsys, "pack", str(tmp_path / "w.pt"), "--format", "int4", "-o", str(first))[0] == 0
    assert run(capsys, "pack", str(first), "--format", "posit8_es2", "-o", str(second))[0] == 0
    a, b = lb.load(first), lb.load(second)
    assert torch.equal(b["fc.weight"], lb.parse_format("posit8_es2").quantize(a["fc.weight"]))
    raw = bytearray(first.read_bytes())
    raw[-3] ^= 0xFF  # a corrupted checkpoint is refused, not repacked
    (tmp_path / "bad.lowbit").write_bytes(bytes(raw))
    code, _, err = run(capsys, "pack", str(tmp_path / "bad.lowbit"), "--format", "int4", "-o", str(tmp_path / "c.lowbit"))
    assert code == 2 and "Traceback" not in err and not (tmp_path / "c.lowbit").exists()


@pytest.mark.parametrize("target", ["missing_dir/out.lowbit", "."])
def test_pack_into_a_path_that_cannot_be_a_file_is_a_clear_error(capsys, tmp_path, target):
    import torch

    torch.save({"fc.weight": torch.randn(6, 8)}, tmp_path / "w.pt")
    code, _, err = run(capsys, "pack", str(tmp_path / "w.pt"), "--format", "int4", "-o", str(tmp_path / target))
    assert code == 2 and "cannot save" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
