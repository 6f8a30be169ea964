"""deploy.fingerprint: the short hash dvc.yaml's fits depend on instead of the code folders themselves."""

import json

import pytest

from deploy.fingerprint import main as fingerprint


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_fingerprint_changes_with_a_files_content_or_name_and_not_with_python_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "pkg" / "a.py", "x = 1\n")
    _write(tmp_path / "main.py", "import pkg\n")
    _write(tmp_path / "recipe.yaml", "lr: 0.1\n")

    def values():
        assert fingerprint(["out/fp.json", "code=main.py,pkg", "recipe=recipe.yaml"]) == 0
        return json.loads((tmp_path / "out" / "fp.json").read_text())

    first = values()
    assert list(first) == ["code", "recipe"] and all(len(v) == 8 for v in first.values())
    assert capsys.readouterr().out.split() == [f"code={first['code']}", f"recipe={first['recipe']}"]
    assert values() == first  # the same files, the same digits

    _write(tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc", "compiled")  # what importing the code leaves
    _write(tmp_path / "pkg" / "b.pyc", "compiled")
    assert values() == first

    _write(tmp_path / "pkg" / "a.py", "x = 2\n")
    edited = values()
    assert edited["code"] != first["code"] and edited["recipe"] == first["recipe"]  # only the entry that covers it

    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "c.py")  # same content, another name
    assert values()["code"] not in (first["code"], edited["code"])


def test_fingerprint_of_a_missing_path_or_a_dotted_name_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fingerprint(["fp.json", "code=nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and "dvc.yaml" in err
    with pytest.raises(SystemExit) as exit_info:
        fingerprint(["fp.json", "a.b=fp.json"])
    assert exit_info.value.code == 2
    assert "without dots" in capsys.readouterr().err
    assert not (tmp_path / "fp.json").exists()
