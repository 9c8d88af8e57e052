"""wire/generate.py features, on tests/data/wire_features.csv, plus the committed outputs."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from common.amount import AmountMsat, AmountSat
from wire import extract_bolts, generate
from wire.fundamental import UnknownMessageError, WireError, encode_bigsize

ROOT = Path(__file__).resolve().parents[1]
FEATURES_CSV = Path(__file__).parent / "data" / "wire_features.csv"
KEY = b"\x02" + b"\x11" * 32
KEY2 = b"\x03" + b"\x22" * 32


def load_generated(csv_text: str, name: str, tmp: Path) -> ModuleType:
    path = tmp / f"{name}.py"
    path.write_text(generate.generate(csv_text, f"{name}.csv"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolves ClassVar annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    text = FEATURES_CSV.read_text(encoding="utf-8")
    return load_generated(text, "features_wiregen", tmp_path_factory.mktemp("gen"))


def _utxo(gen: ModuleType, n: int, close: int | None = None) -> object:
    return gen.Utxo(bytes([n]) * 32, n, AmountSat(1000 * n), b"\x51" * n, close)


def _features(gen: ModuleType, **over: object) -> object:
    values: dict[str, object] = {
        "flag": True,
        "opt_u32": 7,
        "opt_utxo": _utxo(gen, 1, close=99),
        "opt_msat": None,
        "sat": AmountSat(21_000_000 * 100_000_000),
        "msat": AmountMsat(2**64 - 1),
        "label": "héllo",
        "tx": b"\x02\x00\x00\x00",
        "psbt": b"psbt\xff",
        "blob": b"",
        "keys": (KEY, KEY2),
        "values": (1, 2**64 - 1),
        "utxos": (_utxo(gen, 2), _utxo(gen, 3)),
        "fixed": (1, 2, 3),
        "sigs": (b"\x01" * 64, b"\x02" * 64),
        "flags": (False, True),
        "rest": b"trailing",
    }
    values.update(over)
    return gen.FeaturesTest(**values)


def test_class_shapes(gen: ModuleType) -> None:
    msg = _features(gen)
    names = [f.name for f in dataclasses.fields(msg)]
    # Length fields are derived on encode, so they are not attributes.
    assert "num" not in names and "num_utxos" not in names and "scriptlen" not in names
    # A message ending in `...` has no room for an extension, so no `extra`.
    assert "extra" not in names
    assert "extra" in [f.name for f in dataclasses.fields(gen.Empty)]
    assert gen.FeaturesTest.TYPE == 60000 and gen.FeaturesTest.NAME == "features_test"
    assert gen.MESSAGES[60002] is gen.TailSubtypes and gen.BY_NAME["empty"] is gen.Empty
    assert list(gen.SUBTYPES.items()) == [("utxo", gen.Utxo)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.flag = False  # type: ignore[misc]


def test_roundtrip_all_features(gen: ModuleType) -> None:
    msg = _features(gen)
    raw = msg.encode()
    assert raw[:2] == (60000).to_bytes(2, "big")
    assert gen.FeaturesTest.decode(raw) == msg
    assert gen.decode(raw) == msg
    assert isinstance(gen.decode(raw).sat, AmountSat)


def test_wire_layout(gen: ModuleType) -> None:
    raw = _features(gen, opt_utxo=None, opt_u32=None, opt_msat=AmountMsat(5)).encode()
    # bool, then ?u32 absent, ?utxo absent, ?amount_msat present (presence byte 1 + u64).
    assert raw[2:6] == b"\x01" + b"\x00" + b"\x00" + b"\x01"
    assert raw[6:14] == (5).to_bytes(8, "big")
    label = "héllo".encode()
    i = 14 + 16
    assert raw[i : i + 2 + len(label)] == len(label).to_bytes(2, "big") + label
    i += 2 + len(label)
    assert raw[i : i + 8] == b"\x00\x00\x00\x04\x02\x00\x00\x00"  # bitcoin_tx: u32 length
    i += 8 + 4 + 5 + 4
    # One u16 count shared by `keys` and `values`.
    assert raw[i : i + 2 + 66 + 16] == b"\x00\x02" + KEY + KEY2 + (1).to_bytes(8, "big") + (
        b"\xff" * 8
    )
    assert raw.endswith(b"\x00\x01" + b"trailing")


def test_shared_length_must_match(gen: ModuleType) -> None:
    with pytest.raises(WireError, match="num"):
        _features(gen, values=(1,)).encode()


def test_fixed_counts_checked(gen: ModuleType) -> None:
    with pytest.raises(WireError):
        _features(gen, fixed=(1, 2)).encode()
    with pytest.raises(WireError):
        _features(gen, sigs=(b"\x01" * 64,)).encode()
    with pytest.raises(WireError):
        _features(gen, keys=(KEY, b"\x04" + KEY[1:])).encode()
    with pytest.raises(WireError):
        _features(gen, utxos=(_utxo(gen, 1),) * 256).encode()  # u8 count overflows


def test_bad_values_rejected_on_decode(gen: ModuleType) -> None:
    raw = bytearray(_features(gen).encode())
    bad_bool = bytes(raw[:2]) + b"\x02" + bytes(raw[3:])
    with pytest.raises(WireError, match="bool"):
        gen.FeaturesTest.decode(bad_bool)
    bad_presence = bytes(raw[:3]) + b"\x02" + bytes(raw[4:])
    with pytest.raises(WireError, match="presence"):
        gen.FeaturesTest.decode(bad_presence)
    for cut in range(len(raw) - len(b"trailing")):
        with pytest.raises(WireError):
            gen.FeaturesTest.decode(bytes(raw[:cut]))


def test_wirestring_must_be_utf8(gen: ModuleType) -> None:
    raw = _features(gen, label="ab").encode()
    i = raw.index(b"\x00\x02ab")
    with pytest.raises(WireError, match="UTF-8"):
        gen.FeaturesTest.decode(raw[:i] + b"\x00\x02\xff\xfe" + raw[i + 4 :])


def test_ellipsis_subtype_array(gen: ModuleType) -> None:
    msg = gen.TailSubtypes(KEY, (_utxo(gen, 1), _utxo(gen, 2, close=5)))
    raw = msg.encode()
    assert gen.TailSubtypes.decode(raw) == msg
    with pytest.raises(WireError):
        gen.TailSubtypes.decode(raw[:-1])
    assert gen.TailSubtypes.decode(raw[:35]).items == ()


def test_subtype_standalone(gen: ModuleType) -> None:
    u = _utxo(gen, 4, close=1)
    assert gen.Utxo.decode(u.encode()) == u
    with pytest.raises(WireError):
        gen.Utxo.decode(u.encode() + b"\x00")


def test_extra_bytes_kept(gen: ModuleType) -> None:
    msg = gen.Empty.decode(b"\xea\x64\x01\x02")
    assert msg.extra == b"\x01\x02" and msg.encode() == b"\xea\x64\x01\x02"
    with pytest.raises(WireError, match="wrong type"):
        gen.Empty.decode(b"\xea\x66")
    with pytest.raises(UnknownMessageError) as exc:
        gen.decode(b"\x00\x01")
    assert exc.value.msgtype == 1
    with pytest.raises(WireError):
        gen.decode(b"\x00")


def test_tlv_records(gen: ModuleType) -> None:
    tlvs = gen.WithTlvsTlvs(
        amount=256, pair=gen.WithTlvsTlvsPair(1, 70000), marker=True, ports=(1, 2)
    )
    raw = gen.WithTlvs(9, tlvs).encode()
    assert raw[2:] == bytes.fromhex("090102010003070001fe000111700400060400010002")
    assert gen.WithTlvs.decode(raw) == gen.WithTlvs(9, tlvs)
    assert gen.WithTlvs(9).encode() == raw[:3]
    assert gen.WithTlvs.decode(raw[:3]).tlvs == gen.WithTlvsTlvs()


@pytest.mark.parametrize(
    "stream",
    [
        "0101" + "00",  # tu64 with a leading zero
        "0109" + "01" * 9,  # tu64 longer than 8 bytes
        "03030001fd",  # pair: u16 then a bigsize cut short
        "030400010001",  # pair: trailing byte after its fields
        "040100",  # flag record with content
        "0603000100",  # u16 array with an odd byte count
        "0800",  # unknown even
        "05000300",  # out of order
    ],
)
def test_tlv_record_errors(gen: ModuleType, stream: str) -> None:
    with pytest.raises(WireError):
        gen.WithTlvsTlvs.decode(bytes.fromhex(stream))


def test_tlv_unknown_records_on_encode(gen: ModuleType) -> None:
    ok = gen.WithTlvsTlvs(marker=True, unknown=((5, b"x"), (1001, b"")))
    assert ok.encode() == bytes.fromhex("0400050178" + encode_bigsize(1001).hex() + "00")
    for bad in (((8, b""),), ((1, b""),), ((5, b""), (5, b""))):
        with pytest.raises(WireError):
            gen.WithTlvsTlvs(unknown=bad).encode()


# ------------------------------------------------------------------ generator errors


@pytest.mark.parametrize(
    "csv,line,needle",
    [
        ("msgtype,m,1\nmsgdata,m,a,u8,\nmsgdata,m,b,frobnicate,\n", 3, "frobnicate"),
        ("msgtype,m,1\nmsgdata,m,a,byte,len\n", 2, "len"),
        ("tlvtype,s,r,1\ntlvdata,s,r,a,tu32,\ntlvdata,s,r,b,u8,\n", 2, "tu32"),
        ("msgtype,m,1\nmsgdata,m,a,tu32,\n", 2, "tu32"),
        ("msgtype,m,1\nmsgdata,m,a,byte,...\nmsgdata,m,b,u8,\n", 2, "..."),
        ("msgtype,m,1\nmsgtype,m,2\n", 2, "duplicate"),
        ("bogus,row\n", 1, "bogus"),
    ],
)
def test_generator_errors_name_the_line(csv: str, line: int, needle: str) -> None:
    with pytest.raises(generate.GenerateError) as exc:
        generate.generate(csv, "bad.csv")
    assert f"bad.csv:{line}:" in str(exc.value) and needle in str(exc.value)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wire.generate", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def test_cli_unknown_type_fails(tmp_path: Path) -> None:
    csv = tmp_path / "bad_wire.csv"
    csv.write_text("msgtype,m,1\nmsgdata,m,a,nosuchtype,\n")
    proc = _run(str(csv), str(tmp_path / "bad_wiregen.py"))
    assert proc.returncode != 0
    assert "bad_wire.csv:2" in proc.stderr and "nosuchtype" in proc.stderr
    assert not (tmp_path / "bad_wiregen.py").exists()


def test_cli_check_detects_stale_output(tmp_path: Path) -> None:
    csv = tmp_path / "x_wire.csv"
    out = tmp_path / "x_wiregen.py"
    csv.write_text("msgtype,m,1\nmsgdata,m,a,u8,\n")
    assert _run("--check", str(csv), str(out)).returncode != 0  # missing output
    assert _run(str(csv), str(out)).returncode == 0
    assert _run("--check", str(csv), str(out)).returncode == 0
    csv.write_text("msgtype,m,1\nmsgdata,m,a,u16,\n")
    proc = _run("--check", str(csv), str(out))
    assert proc.returncode != 0 and "stale" in proc.stderr


# ------------------------------------------------------------------ committed outputs


def test_peer_wire_csv_up_to_date() -> None:
    bolts = sorted(str(p) for p in (ROOT / "doc" / "bolts").glob("0*.md"))
    text = extract_bolts.to_csv(extract_bolts.extract_files(bolts))
    assert text == (ROOT / "wire" / "peer_wire.csv").read_text(encoding="utf-8")
    # Input order does not matter.
    assert text == extract_bolts.to_csv(extract_bolts.extract_files(bolts[::-1]))


def test_peer_wire_csv_contents() -> None:
    rows = set((ROOT / "wire" / "peer_wire.csv").read_text().splitlines())
    for row in (
        "msgtype,open_channel,32",
        "msgdata,open_channel,temporary_channel_id,byte,32",
        "msgdata,init,features,byte,flen",
        "msgdata,open_channel,tlvs,open_channel_tlvs,",
        "tlvtype,open_channel_tlvs,channel_type,1",
        "tlvdata,open_channel_tlvs,channel_type,type,byte,...",
        "tlvdata,init_tlvs,networks,chains,chain_hash,...",
        "subtype,witness",
        "subtypedata,witness,witness_data,byte,len",
        "msgdata,tx_signatures,witnesses,witness,num_witnesses",
        # The spec defines update_add_htlc_tlvs without listing it as a field.
        "msgdata,update_add_htlc,tlvs,update_add_htlc_tlvs,",
        # 210*sha256[..4]: 210 four-byte truncated HMACs.
        "tlvdata,update_fulfill_htlc_tlvs,attribution_data,truncated_hmacs,byte,840",
    ):
        assert row in rows
    # Appendix test streams are not protocol messages.
    assert not any(r.startswith("tlvtype,n1,") for r in rows)


def test_peer_wiregen_up_to_date_and_clean() -> None:
    csv, out = "wire/peer_wire.csv", "wire/peer_wiregen.py"
    assert _run("--check", csv, out).returncode == 0
    text = (ROOT / out).read_text(encoding="utf-8")
    assert text.startswith(f"# Generated by wire/generate.py from {csv}: do not edit.\n")
    for args in (["check"], ["format", "--check"]):
        cmd = [sys.executable, "-m", "ruff", *args, out]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generation_is_deterministic() -> None:
    text = FEATURES_CSV.read_text(encoding="utf-8")
    assert generate.generate(text, "f.csv") == generate.generate(text, "f.csv")
