"""``python -m fgssl.data.prepare``: download (from a loopback HTTP server started here, never the internet),
resume, checksum, safe unpacking, reader check, ``--archive`` and ``data.download=true``.

The archives are tiny copies of each official layout built from ``fixtures.py``; the tests point the
prepare code at them through ``$FGSSL_DATA_SOURCES`` (URLs, MD5s and expected counts), leaving the
recorded real values in ``fgssl.data.prepare.SPECS`` untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import fgssl.data.download
import fgssl.data.prepare as prep
from conftest import ROOT, compose_cfg
from fgssl.errors import FgsslError
from fixtures import make_aircraft, make_cars, make_cub, one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


# ---------------------------------------------------------------------- loopback server
class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP Range support. ``cut[name] = n`` makes the
    next response for ``name`` announce the full length, send ``n`` bytes and drop the connection."""

    def __init__(self):
        self.files, self.cut, self.log = {}, {}, []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                srv.log.append((name, self.headers.get("Range")))
                if name not in srv.files:
                    self.send_error(404)
                    return
                data = srv.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = srv.cut.pop(name, None)
                if n is not None:
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.close()


# ---------------------------------------------------------------------- tiny archives in the official layouts
def _tgz(folder: Path, arcnames, extra=()) -> bytes:
    """gzip'd tar of ``folder/<arcname>`` for each arcname (recursively), plus (name, bytes) extras."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for a in arcnames:
            tf.add(folder / a, arcname=a)
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{dataset: (files {name: bytes}, counts)}, files named as the official ones."""
    base = tmp_path_factory.mktemp("official")
    out = {}
    # 11 train images per class: 33 = two smoke batches of 16
    fx = make_cub(base / "cub", train_per_class=11)
    out["cub"] = ({"CUB_200_2011.tgz": _tgz(base / "cub", ["CUB_200_2011"], [("attributes.txt", b"1 has_bill\n")])},
                  (3, len(fx.train), len(fx.test)))
    fx = make_aircraft(base / "aircraft", train_per_class=11)
    out["aircraft"] = ({"fgvc-aircraft-2013b.tar.gz": _tgz(base / "aircraft", ["fgvc-aircraft-2013b"])},
                       (3, len(fx.train), len(fx.test)))
    fx = make_cars(base / "cars", train_per_class=11)
    sc = base / "cars" / "stanford_cars"
    out["cars"] = ({"car_devkit.tgz": _tgz(sc, ["devkit"]), "cars_train.tgz": _tgz(sc, ["cars_train"]),
                    "cars_test.tgz": _tgz(sc, ["cars_test"]),
                    "cars_test_annos_withlabels.mat": (sc / "cars_test_annos_withlabels.mat").read_bytes()},
                   (3, len(fx.train), len(fx.test)))
    return out


def _sources(tmp_path: Path, monkeypatch, archives, server=None, md5=None, **counts_override) -> dict:
    """Write the override JSON for every dataset and point $FGSSL_DATA_SOURCES at it."""
    src = {}
    for name, (files, counts) in archives.items():
        src[name] = {"files": [{"name": n, "md5": (md5 or {}).get(n, _md5(b)),
                                "url": (server.url + n) if server else None} for n, b in files.items()],
                     "counts": counts_override.get(name, counts)}
        if server:
            server.files.update(files)
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(src))
    monkeypatch.setenv(prep.SOURCES_ENV, str(path))
    return src


def _write(files: dict, where: Path) -> list:
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for n, b in files.items():
        (where / n).write_bytes(b)
        out.append(where / n)
    return out


def _smoke(tmp_path: Path, line: str, *extra: str):
    import fgssl.run

    cfg = compose_cfg([*line.split(), "debug=smoke", "trainer.enable_progress_bar=false", "logger=none",
                       "eval.localisation=false", *extra], out_dir=tmp_path / "run")
    return fgssl.run.train(cfg)


# ---------------------------------------------------------------------- the recorded sources
def test_real_sources_recorded_and_untouched_by_overrides(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    assert prep.get_spec("cub").files[0].url.startswith(server.url)
    real = prep.SPECS
    assert real["cub"].files[0].url == "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
    assert real["cub"].files[0].md5 == "97eceeb196236b17998738112f37df78"
    assert real["aircraft"].files[0].url.startswith("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/")
    assert real["aircraft"].files[0].md5 == "d4acdd33327262359767eeaa97a4f732"
    assert [s.name for s in real["cars"].files] == ["car_devkit.tgz", "cars_train.tgz", "cars_test.tgz",
                                                    "cars_test_annos_withlabels.mat"]
    assert all(s.url is None and len(s.md5) == 32 for s in real["cars"].files)
    assert (real["cub"].counts, real["aircraft"].counts, real["cars"].counts) == (
        (200, 5994, 5794), (100, 6667, 3333), (196, 8144, 8041))


# ---------------------------------------------------------------------- download, verify, unpack, train
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_download_verify_unpack_and_train_aircraft(tmp_path, monkeypatch, archives, server, capsys):
    _sources(tmp_path, monkeypatch, archives, server)
    root = tmp_path / "data"
    line = prep.prepare("aircraft", root)
    assert line == f"data=aircraft data.root={root}"
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == line
    assert "matches the published checksum" in err and "3 classes" in err
    assert sorted(p.name for p in root.iterdir()) == ["fgvc-aircraft-2013b"]  # no staging, archive removed
    assert server.log == [("fgvc-aircraft-2013b.tar.gz", None)]
    metrics = _smoke(tmp_path, line)
    assert metrics["test/knn_top1"] >= 0
    # a second run finds it prepared: no request
    assert prep.prepare("aircraft", root) == line
    assert len(server.log) == 1


def test_download_cub_keeps_archive_layout(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    root = tmp_path / "data"
    line = prep.prepare("cub", root, keep_archive=True)
    assert line == f"data=cub data.root={root / 'CUB_200_2011'}"
    assert (root / "attributes.txt").read_text() == "1 has_bill\n"  # the archive's top-level file, as tar xzf
    assert (root / ".fgssl-downloads" / "CUB_200_2011.tgz").read_bytes() == archives["cub"][0]["CUB_200_2011.tgz"]
    assert not list(root.glob(".fgssl-prepare-*"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_archive_local_files_cars_and_train(tmp_path, monkeypatch, archives, capsys):
    """Stanford Cars has no download: the four official files via --archive (CLI entry point)."""
    _sources(tmp_path, monkeypatch, archives)
    files = _write(archives["cars"][0], tmp_path / "dl")
    root = tmp_path / "data"
    args = ["cars", "--root", str(root)] + [x for f in files for x in ("--archive", str(f))]
    prep.main(args)
    out, err = capsys.readouterr()
    line = f"data=cars data.root={root}"
    assert out.strip().splitlines()[-1] == line
    assert err.count("matches the published checksum") == 4
    assert all(f.exists() for f in files)  # the user's files are never deleted
    assert sorted(p.name for p in (root / "stanford_cars").iterdir()) == [
        "cars_test", "cars_test_annos_withlabels.mat", "cars_train", "devkit"]
    assert _smoke(tmp_path, line)["test/knn_top1"] >= 0


def test_cars_without_archive_says_how(tmp_path, monkeypatch, archives):
    monkeypatch.delenv(prep.SOURCES_ENV, raising=False)
    with pytest.raises(FgsslError, match="no working official download.*--archive"):
        prep.prepare("cars", tmp_path / "data")


def test_cars_missing_one_official_file(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    files = _write(archives["cars"][0], tmp_path / "dl")
    with pytest.raises(FgsslError, match="missing: cars_test.tgz"):
        prep.prepare("cars", tmp_path / "data", [f for f in files if f.name != "cars_test.tgz"])
    assert not (tmp_path / "data" / "stanford_cars").exists()


def test_repackaged_cars_zip_is_located_and_said_unchecked(tmp_path, monkeypatch, archives, capsys):
    """A zip of stanford_cars/ with cars_train/cars_train nesting (as some mirrors have): no published
    checksum, so it is said so and checked by layout and reader."""
    _sources(tmp_path, monkeypatch, archives)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in archives["cars"][0].items():
            if n.endswith(".mat"):
                zf.writestr(f"mirror/stanford_cars/{n}", b)
                continue
            with tarfile.open(fileobj=io.BytesIO(b)) as tf:
                for m in tf.getmembers():
                    if m.isfile():
                        name = m.name.replace("cars_train/", "cars_train/cars_train/")
                        zf.writestr(f"mirror/stanford_cars/{name}", tf.extractfile(m).read())
    z = tmp_path / "stanford-cars.zip"
    z.write_bytes(buf.getvalue())
    prep.prepare("cars", tmp_path / "data", [z])
    assert "checked by layout and reader only" in capsys.readouterr().err
    assert (tmp_path / "data" / "stanford_cars" / "cars_train" / "00001.jpg").is_file()


# ---------------------------------------------------------------------- resume
def test_resume_after_connection_cut_mid_file(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    data = archives["aircraft"][0]["fgvc-aircraft-2013b.tar.gz"]
    half = len(data) // 2
    server.cut["fgvc-aircraft-2013b.tar.gz"] = half
    prep.prepare("aircraft", tmp_path / "data")
    assert server.log == [("fgvc-aircraft-2013b.tar.gz", None), ("fgvc-aircraft-2013b.tar.gz", f"bytes={half}-")]
    assert (tmp_path / "data" / "fgvc-aircraft-2013b" / "data" / "variants.txt").is_file()


def test_resume_partial_file_of_an_earlier_run(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    data = archives["cub"][0]["CUB_200_2011.tgz"]
    part = tmp_path / "data" / ".fgssl-downloads" / "CUB_200_2011.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    prep.prepare("cub", tmp_path / "data")
    assert server.log == [("CUB_200_2011.tgz", "bytes=1000-")]
    assert not part.parent.exists()


def test_cut_every_time_keeps_part_and_says_rerun(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    url = server.url + "x.tgz"
    server.files["x.tgz"] = b"y" * 5000

    class Cut(dict):  # every request is cut after 100 more bytes
        def pop(self, k, d=None):
            return 100

    server.cut = Cut()
    with pytest.raises(FgsslError, match=r"cut 3 times.*x\.tgz\.part is kept: rerun"):
        prep.download(url, tmp_path / "x.tgz", retries=2)
    assert (tmp_path / "x.tgz.part").stat().st_size == 300
    server.cut = {}
    assert prep.download(url, tmp_path / "x.tgz").read_bytes() == b"y" * 5000
    assert server.log[-1] == ("x.tgz", "bytes=300-")


# ---------------------------------------------------------------------- errors
def test_checksum_mismatch_one_line(tmp_path, monkeypatch, archives, server, capsys):
    _sources(tmp_path, monkeypatch, archives, server, md5={"CUB_200_2011.tgz": "0" * 32})
    root = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        prep.main(["cub", "--root", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    got = _md5(archives["cub"][0]["CUB_200_2011.tgz"])
    dl = root / ".fgssl-downloads" / "CUB_200_2011.tgz"
    assert err == (f"fgssl error: checksum mismatch for {dl}: expected md5 {'0' * 32}, got {got}; "
                   f"delete {dl} and run again (it is downloaded anew)")
    assert not (root / "CUB_200_2011").exists() and not list(root.glob(".fgssl-prepare-*"))


def test_checksum_mismatch_of_archive_with_official_name(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = tmp_path / "dl" / "CUB_200_2011.tgz"
    f.parent.mkdir()
    f.write_bytes(archives["cub"][0]["CUB_200_2011.tgz"][:-10])  # truncated copy
    with pytest.raises(FgsslError, match=f"checksum mismatch for {f}: expected md5 .* got .* delete {f}"):
        prep.prepare("cub", tmp_path / "data", [f])


def test_no_network_says_archive(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    port = server.httpd.server_address[1]
    server.close()  # nothing listens there any more
    root = tmp_path / "data"
    with pytest.raises(FgsslError) as e:
        prep.prepare("cub", root)
    msg = str(e.value)
    assert msg.startswith(f"cannot reach http://127.0.0.1:{port}/CUB_200_2011.tgz (") and "no network?" in msg
    assert msg.endswith(f"run: python -m fgssl.data.prepare cub --root {root} --archive /path/to/CUB_200_2011.tgz")
    assert sorted(p.name for p in root.iterdir()) == []


def test_not_enough_disk_checked_before_unpacking(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = _write(archives["aircraft"][0], tmp_path / "dl")
    monkeypatch.setattr(fgssl.data.download, "_free_bytes", lambda p: 1000)
    with pytest.raises(FgsslError, match=r"not enough disk space in .*unpacking fgvc-aircraft-2013b.tar.gz needs "
                                         r".* MB, 0.00 MB free"):
        prep.prepare("aircraft", tmp_path / "data", f)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_unknown_dataset_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prep.main(["birds", "--root", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err == "fgssl error: unknown dataset 'birds'; prepare knows cub, aircraft, cars\n"


def test_archive_that_is_not_the_dataset(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = tmp_path / "holiday.tar.gz"
    f.write_bytes(_tgz(tmp_path, [], [("photos/beach.jpg", b"x" * 10)]))
    with pytest.raises(FgsslError, match="do not hold CUB-200-2011: no CUB_200_2011/images.txt"):
        prep.prepare("cub", tmp_path / "data", [f])
    # Aircraft archive offered as CUB
    f = _write(archives["aircraft"][0], tmp_path / "dl")
    with pytest.raises(FgsslError, match="do not hold CUB-200-2011"):
        prep.prepare("cub", tmp_path / "data", f)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_wrong_counts_is_not_the_full_dataset(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives, aircraft=[100, 6667, 3333])
    f = _write(archives["aircraft"][0], tmp_path / "dl")
    with pytest.raises(FgsslError, match=r"is not the full dataset: 3 classes, 33 train / 9 test images; expected "
                                         r"100 classes, 6667 / 3333"):
        prep.prepare("aircraft", tmp_path / "data", f)
    assert not (tmp_path / "data" / "fgvc-aircraft-2013b").exists()


def test_existing_incomplete_folder_is_not_overwritten(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    half = tmp_path / "data" / "CUB_200_2011"
    half.mkdir(parents=True)
    (half / "images.txt").write_text("1 a/b.jpg\n")
    with pytest.raises(FgsslError, match=f"{half} exists but is not a complete CUB-200-2011.*Move it away"):
        prep.prepare("cub", tmp_path / "data")
    assert (half / "images.txt").read_text() == "1 a/b.jpg\n"


# ---------------------------------------------------------------------- malicious members
def _evil_tar(kind: str, outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("CUB_200_2011/images.txt")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"1 a"))
        if kind == "dotdot":
            m = tarfile.TarInfo("CUB_200_2011/../../evil.txt")
        elif kind == "absolute":
            m = tarfile.TarInfo(str(outside / "evil.txt"))
        elif kind == "symlink_out":
            m = tarfile.TarInfo("CUB_200_2011/link")
            m.type, m.linkname = tarfile.SYMTYPE, "../../.."
        elif kind == "hardlink_out":
            m = tarfile.TarInfo("CUB_200_2011/hard")
            m.type, m.linkname = tarfile.LNKTYPE, str(outside / "victim.txt")
        elif kind == "device":
            m = tarfile.TarInfo("CUB_200_2011/dev")
            m.type = tarfile.CHRTYPE
        m.size = 0 if kind != "dotdot" and kind != "absolute" else 4
        tf.addfile(m, io.BytesIO(b"evil") if m.size else None)
        if kind == "symlink_out":  # then write through the link
            w = tarfile.TarInfo("CUB_200_2011/link/evil.txt")
            w.size = 4
            tf.addfile(w, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink_out", "hardlink_out", "device"])
def test_malicious_members_refused_nothing_written(kind, tmp_path, monkeypatch, archives):
    box = tmp_path / "box"
    outside = box / "outside"
    outside.mkdir(parents=True)
    (outside / "victim.txt").write_text("keep")
    data = _evil_tar(kind, outside)
    root = box / "a" / "data"
    root.mkdir(parents=True)
    f = tmp_path / "CUB_200_2011.tgz"
    f.write_bytes(data)
    _sources(tmp_path, monkeypatch, archives, md5={"CUB_200_2011.tgz": _md5(data)})
    before = sorted(str(p) for p in box.rglob("*"))
    with pytest.raises(FgsslError, match=f"{f}: refusing to unpack: member .*; nothing was unpacked"):
        prep.prepare("cub", root, [f])
    assert sorted(str(p) for p in box.rglob("*")) == before
    assert (outside / "victim.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_malicious_zip_members_refused(name, tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("CUB_200_2011/images.txt", "1 a")
        info = zipfile.ZipInfo("x")
        info.filename = name  # ZipInfo() itself strips a leading '/'
        zf.writestr(info, "evil")
    with pytest.raises(FgsslError, match="refusing to unpack: member"):
        prep.prepare("cub", tmp_path / "data", [z])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


# ---------------------------------------------------------------------- data.download=true
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_data_download_true_prepares_missing_root_then_trains(tmp_path, monkeypatch, archives, server):
    _sources(tmp_path, monkeypatch, archives, server)
    root = tmp_path / "data" / "CUB_200_2011"
    # default false: a missing root is an error, and nothing is fetched
    with pytest.raises(FgsslError, match="dataset root not found"):
        _smoke(tmp_path, f"data=cub data.root={root}")
    assert server.log == []
    metrics = _smoke(tmp_path, f"data=cub data.root={root}", "data.download=true")
    assert server.log == [("CUB_200_2011.tgz", None)]
    assert (root / "images.txt").is_file() and metrics["test/knn_top1"] >= 0


def test_make_data_target():
    out = subprocess.run(["make", "-n", "data", "NAME=cars", "ROOT=/d", "ARCHIVE=a.tgz b.mat"], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, VENV="/work/none"))
    assert "-m fgssl.data.prepare cars --root /d --archive a.tgz --archive b.mat" in out.stdout


def test_cli_runs_as_module(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "fgssl.data.prepare", "cars", "--root", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("fgssl error: Stanford Cars has no working official download") and \
        r.stderr.count("\n") == 1
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_file_that_is_no_archive(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = tmp_path / "CUB_200_2011 (1).tgz"
    f.write_bytes(b"<html>a login page saved by a browser</html>")
    with pytest.raises(FgsslError, match=r"not a tar or zip archive \(truncated download, or not the dataset\?\)"):
        prep.prepare("cub", tmp_path / "data", [f])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_wrong_archive_is_told_before_unpacking(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = _write(archives["aircraft"][0], tmp_path / "dl")
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: pytest.fail("unpacked a wrong archive"))
    with pytest.raises(FgsslError, match="do not hold CUB-200-2011"):
        prep.prepare("cub", tmp_path / "data", f)


def test_interrupted_unpack_leaves_no_dataset_and_next_run_cleans_up(tmp_path, monkeypatch, archives):
    _sources(tmp_path, monkeypatch, archives)
    f = _write(archives["cub"][0], tmp_path / "dl")
    root = tmp_path / "data"
    real = tarfile.TarFile.extractall

    def extract_then_die(self, path, *a, **k):
        real(self, path, *a, **k)  # everything is on disk, in the staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("cub", root, f)
    assert sorted(p.name for p in root.iterdir()) == []
    # a staging folder left by a killed run (no finally) is removed by the next run
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    (root / ".fgssl-prepare-cub" / "CUB_200_2011").mkdir(parents=True)
    (root / ".fgssl-prepare-cub" / "CUB_200_2011" / "images.txt").write_text("1 x.jpg\n")
    prep.prepare("cub", root, f)
    assert sorted(p.name for p in root.iterdir()) == ["CUB_200_2011", "attributes.txt"]
