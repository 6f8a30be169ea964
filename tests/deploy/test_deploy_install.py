"""`python -m deploy install / rollback / list`: a models folder keeps every version, `current` moves only after
a verified install, and rollback is one command."""

import json
import os

from deploy.bundle import MANIFEST, read_manifest, write_manifest


def _renamed(bundle_dir, name):
    manifest = read_manifest(bundle_dir)
    manifest["name"] = name
    write_manifest(bundle_dir, manifest)
    return bundle_dir


def _current_name(models):
    return read_manifest(os.path.join(models, "current"))["name"]


def test_install_two_then_rollback_makes_the_first_current_again(bundle_copy, digits_bundle, tmp_path, run_cli):
    models = str(tmp_path / "models")
    code, out, err = run_cli("install", "--bundle", digits_bundle.path, "--to", models)
    assert code == 0, err
    assert "version 0001" in out
    code, out, err = run_cli("install", "--bundle", _renamed(bundle_copy, "digits-v2"), "--to", models)
    assert code == 0, err
    assert _current_name(models) == "digits-v2"

    code, out, err = run_cli("list", "--to", models, "--json")
    rows = json.loads(out)
    assert {(r["version"], r["name"], r["current"]) for r in rows} == {("0001", "digits-tiny", False),
                                                                       ("0002", "digits-v2", True)}
    code, out, err = run_cli("rollback", "--to", models)
    assert code == 0, err
    assert _current_name(models) == "digits-tiny"
    assert sorted(os.listdir(os.path.join(models, "versions"))) == ["0001", "0002"]  # nothing is deleted

    # infer takes the models folder and runs the current version
    code, out, err = run_cli("infer", "--bundle", models, "--runtime", "onnxruntime", digits_bundle.image_paths[0])
    assert code == 0, err
    assert json.loads(out)["top"][0]["class"].startswith("digit_")


def test_a_corrupted_bundle_is_refused_and_current_is_unchanged(bundle_copy, digits_bundle, tmp_path, run_cli):
    models = str(tmp_path / "models")
    assert run_cli("install", "--bundle", digits_bundle.path, "--to", models)[0] == 0
    before = os.readlink(os.path.join(models, "current"))
    with open(os.path.join(bundle_copy, "model.onnx"), "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff" * 16)

    code, out, err = run_cli("install", "--bundle", bundle_copy, "--to", models)
    assert code == 2
    assert err.count("\n") == 1 and "sha256" in err and "model.onnx" in err
    assert os.readlink(os.path.join(models, "current")) == before
    assert os.listdir(os.path.join(models, "versions")) == ["0001"]  # no half-installed version left behind


def test_a_bundle_whose_model_does_not_run_is_refused(bundle_copy, tmp_path, run_cli):
    from deploy.bundle import artifact_entry

    models = str(tmp_path / "models")
    path = os.path.join(bundle_copy, "model.onnx")
    with open(path, "wb") as handle:
        handle.write(b"not an onnx file")
    manifest = read_manifest(bundle_copy)  # a manifest that agrees with the broken file: only running it can tell
    manifest["artifacts"][0] = artifact_entry(path, "onnx", "fp32")
    write_manifest(bundle_copy, manifest)

    code, out, err = run_cli("install", "--bundle", bundle_copy, "--to", models)
    assert code == 2 and "cannot load it" in err
    assert not os.path.lexists(os.path.join(models, "current"))


def test_rollback_with_one_version_says_there_is_nothing_older(digits_bundle, tmp_path, run_cli):
    models = str(tmp_path / "models")
    assert run_cli("install", "--bundle", digits_bundle.path, "--to", models)[0] == 0
    code, out, err = run_cli("rollback", "--to", models)
    assert code == 2 and "oldest" in err and err.startswith("error: ")
    code, out, err = run_cli("rollback", "--to", str(tmp_path / "nowhere"))
    assert code == 2 and "install one first" in err
    assert not os.path.exists(os.path.join(digits_bundle.path, "current"))
    assert os.path.isfile(os.path.join(models, "current", MANIFEST))


def test_publish_copies_the_newest_runs_bundle_and_refuses_a_newest_run_without_one(digits_bundle, tmp_path, capsys):
    import shutil

    from deploy.publish import main as publish

    runs = tmp_path / "runs" / "digits"
    shutil.copytree(digits_bundle.path, runs / "version_9" / "bundle")
    shutil.copytree(digits_bundle.path, runs / "version_10" / "bundle")
    (runs / "version_10" / "bundle" / "report.json").write_text('{"rows": []}\n')
    out = tmp_path / "models" / "digits"
    assert publish([str(runs), str(out)]) == 0
    assert "version_10" in capsys.readouterr().out  # 10 is newer than 9, though it sorts first as text
    assert (out / "bundle" / "manifest.json").is_file() and (out / "bundle" / "report.json").read_text() == '{"rows": []}\n'
    # the short metrics beside it (no rows here): no top-1 or latency for metrics.json, the size in more_metrics.json
    assert json.loads((out / "metrics.json").read_text()) == {}
    assert set(json.loads((out / "more_metrics.json").read_text())) == {"mb"}

    (runs / "version_11").mkdir()  # a fit whose fit-end chain wrote no bundle
    assert publish([str(runs), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version_11" in err and "no bundle" in err
    assert (out / "bundle" / "manifest.json").is_file()  # the published bundle stays as it was


# --- bundles that reach outside themselves (links, devices), strays and killed installs ------------------------

def _refused_everywhere(run_cli, bundle, models, image, words):
    """install, infer and bench each refuse the bundle with one sentence naming the file; nothing is installed."""
    for command in (["install", "--bundle", bundle, "--to", models],
                    ["infer", "--bundle", bundle, "--runtime", "onnxruntime", image],
                    ["bench", "--bundle", bundle, "--runtime", "onnxruntime", "--iterations", "2"]):
        code, out, err = run_cli(*command)
        assert code == 2, (command, err)
        assert err.count("\n") == 1 and all(w in err for w in words), (command, err)
    assert not os.path.isdir(os.path.join(models, "versions")) or os.listdir(os.path.join(models, "versions")) == []


def test_a_linked_model_file_is_refused_by_install_infer_and_bench(bundle_copy, digits_bundle, tmp_path, run_cli):
    real = tmp_path / "elsewhere.onnx"
    os.replace(os.path.join(bundle_copy, "model.onnx"), real)
    os.symlink(real, os.path.join(bundle_copy, "model.onnx"))  # same bytes, same sha256: only the link is wrong
    _refused_everywhere(run_cli, bundle_copy, str(tmp_path / "models"), digits_bundle.image_paths[0],
                        ["model.onnx", "symbolic link"])


def test_an_unlisted_link_to_a_system_file_and_a_linked_folder_are_refused(bundle_copy, digits_bundle, tmp_path,
                                                                             run_cli):
    os.symlink("/etc/passwd", os.path.join(bundle_copy, "notes.txt"))
    _refused_everywhere(run_cli, bundle_copy, str(tmp_path / "models"), digits_bundle.image_paths[0],
                        ["notes.txt", "symbolic link"])
    os.unlink(os.path.join(bundle_copy, "notes.txt"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(bundle_copy, "engines"))  # a folder a relative path would pass through
    _refused_everywhere(run_cli, bundle_copy, str(tmp_path / "models"), digits_bundle.image_paths[0],
                        ["engines", "symbolic link"])


def test_a_fifo_in_a_bundle_is_refused(bundle_copy, digits_bundle, tmp_path, run_cli):
    os.mkfifo(os.path.join(bundle_copy, "pipe"))
    _refused_everywhere(run_cli, bundle_copy, str(tmp_path / "models"), digits_bundle.image_paths[0],
                        ["pipe", "not a regular file"])


def test_install_copies_only_the_listed_files_and_their_companions(bundle_copy, tmp_path, run_cli):
    with open(os.path.join(bundle_copy, ".model.prepared-inferred.onnx"), "wb") as stray:  # a scratch file left behind
        stray.write(b"half written")
    with open(os.path.join(bundle_copy, ".runtime-choice.json"), "w") as cache:  # another device's measurement
        cache.write("{}")
    models = str(tmp_path / "models")
    code, out, err = run_cli("install", "--bundle", bundle_copy, "--to", models)
    assert code == 0, err
    installed = sorted(os.listdir(os.path.join(models, "versions", "0001")))
    listed = {a["file"] for a in read_manifest(bundle_copy)["artifacts"] if a.get("status", "ok") == "ok"}
    assert set(installed) == listed | {n for n in ("manifest.json", "labels.txt") if n in os.listdir(bundle_copy)}


def test_a_killed_installs_staging_folder_is_removed_by_the_next_install(bundle_copy, tmp_path, run_cli):
    import subprocess
    import sys

    models = tmp_path / "models"
    (models / "versions").mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = models / "versions" / f".incoming-{gone.stdout.strip()}-abc123"  # its process has exited
    (stale / "bundle").mkdir(parents=True)
    alive = models / "versions" / f".incoming-{os.getpid()}-def456"  # a running install's: left alone
    alive.mkdir()
    assert run_cli("install", "--bundle", bundle_copy, "--to", str(models))[0] == 0
    assert not stale.exists() and alive.exists()


def test_list_shows_a_version_installed_but_never_made_current(bundle_copy, digits_bundle, tmp_path, run_cli,
                                                               monkeypatch):
    from deploy import install as installing

    models = str(tmp_path / "models")
    assert run_cli("install", "--bundle", digits_bundle.path, "--to", models)[0] == 0
    with monkeypatch.context() as patched:  # killed after its copy was renamed in, before the switch
        patched.setattr(installing, "switch_current", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            installing.install(bundle_copy, models)
        except KeyboardInterrupt:
            pass
    assert run_cli("install", "--bundle", bundle_copy, "--to", models)[0] == 0
    assert run_cli("rollback", "--to", models, "--version", "1")[0] == 0
    code, out, err = run_cli("list", "--to", models, "--json")
    states = {r["version"]: r["state"] for r in json.loads(out)}
    assert states == {"0001": "current", "0002": "never current", "0003": "was current"}
    code, out, err = run_cli("list", "--to", models)
    assert "never current" in out
