"""`fit --ckpt_path last` never corrupts a run: a resume that cannot end where the run would have ended is refused
in one sentence before anything is written, and the run's files stay byte-identical."""

from edgecls_testing import NO_FIT_END, TINY, error_lines, file_hashes, printed_top1


def refused(proc, *names):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def test_resuming_a_finished_run_is_refused_and_leaves_it_as_it_was(quickstart, tmp_path, cli):
    common = ["fit", "--config", quickstart, *TINY, *NO_FIT_END]
    cli([*common, "--trainer.max_epochs", "1"], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    before = file_hashes(run)

    # the YAML says 10 epochs: resuming the finished 1-epoch run would stretch its one-cycle schedule past its end
    proc = cli([*common, "--ckpt_path", "last"], tmp_path, expect_ok=False)
    sentence = refused(proc, "runs/quickstart/version_0", "already finished its 1 epochs", "start a new run")
    assert "--trainer.max_epochs" in sentence
    assert file_hashes(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_an_interrupted_run_refuses_other_settings_or_a_stretched_one_cycle_and_keeps_its_files(quickstart, tmp_path, cli):
    # two epochs of one-cycle, stopped after the first (as a kill would): resumable with its own settings only
    interrupted = ["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "2", "--trainer.max_steps", "8"]
    cli(interrupted, tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    before = file_hashes(run)

    other_settings = cli([*interrupted, "--model.optimizer.lr", "0.05", "--data.batch_size", "32", "--ckpt_path", "last"],
                              tmp_path, expect_ok=False)
    sentence = refused(other_settings, "model.optimizer.init_args.lr", "data.batch_size")
    assert "model.backbone" not in sentence  # only what differs is named
    assert file_hashes(run) == before

    stretched = cli([*interrupted, "--trainer.max_epochs", "4", "--ckpt_path", "last"], tmp_path, expect_ok=False)
    refused(stretched, "one-cycle", "trainer.max_epochs 2 (now 4)", "--trainer.max_epochs 2")
    assert file_hashes(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_a_checkpoint_from_another_experiment_is_refused_naming_what_differs(quickstart, tmp_path, cli):
    """Copied out of its run folder, a checkpoint has no config.yaml beside it: it is compared with its own record
    of its network and data, before any run folder is made."""
    import shutil

    trained = tmp_path / "trained"
    trained.mkdir()
    cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], trained)
    foreign = tmp_path / "downloaded.ckpt"
    shutil.copy(trained / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt", foreign)
    here = tmp_path / "here"
    here.mkdir()
    cases = [
        (["fit", "--model.backbone", "mobilenet_v3_small", "--model.backbone_args", "{}"], ["model.backbone"]),
        (["fit", "--data.source", "SyntheticSource", "--data.source.classes", "3", "--data.source.count", "60"],
         ["model.num_classes (10 in the checkpoint, 3 here)", "data.source"]),
        (["test", "--data.image_size", "24"], ["data.image_size"]),
    ]
    for (command, *args), words in cases:
        proc = cli([command, "--config", quickstart, *TINY, *NO_FIT_END, *args, "--ckpt_path", foreign], here,
                   expect_ok=False)
        refused(proc, str(foreign), *words)
        assert not (here / "runs").exists()
    # the same checkpoint under its own settings is accepted: scored by `test` into a run of its own
    proc = cli(["test", "--config", quickstart, *TINY, *NO_FIT_END, "--ckpt_path", foreign], here)
    assert proc.returncode == 0


def test_a_finished_runs_best_checkpoint_is_refused_like_its_last(quickstart, tmp_path, cli):
    common = ["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "2"]
    cli(common, tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    before = file_hashes(run)
    proc = cli([*common, "--ckpt_path", best], tmp_path, expect_ok=False)
    refused(proc, "already finished its 2 epochs")
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"] and file_hashes(run) == before


def test_bundle_runs_the_fit_end_chain_again_into_a_finished_run_after_an_interrupt(quickstart, tmp_path, cli):
    import json
    import shutil

    from deploy.bundle import load_bundle

    chain = json.dumps([{"class_path": "callbacks.ONNXExport"}, {"class_path": "callbacks.DeployBundle",
                                                                    "init_args": {"latency_iterations": 5,
                                                                                  "throughput_iterations": 1}}])
    cli(["fit", "--config", quickstart, *TINY, "--trainer.callbacks", chain, "--trainer.max_epochs", "1"], tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    first = load_bundle(run / "bundle").manifest
    # Ctrl-C during the fit-end steps: no bundle, a half-filled staging folder, the checkpoints kept
    shutil.rmtree(run / "bundle")
    (run / ".bundle-staging").mkdir()
    (run / ".bundle-staging" / "model.onnx").write_bytes(b"half written")
    checkpoints = file_hashes(run / "checkpoints")

    proc = cli(["bundle", "--run", run.relative_to(tmp_path)], tmp_path)
    again = load_bundle(run / "bundle", verify=True).manifest
    assert [a["file"] for a in again["artifacts"]] == [a["file"] for a in first["artifacts"]] == ["model.onnx"]
    assert again["source"]["checkpoint"] == first["source"]["checkpoint"]  # the run's best, as at the fit's end
    assert not (run / ".bundle-staging").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # into the run, not a new version
    assert file_hashes(run / "checkpoints") == checkpoints  # nothing trained
    printed_top1(proc.stdout)  # the fit ended with its test
    # a named checkpoint of the run instead of its best; a file of another run is refused
    again_proc = cli(["bundle", "--run", run, "--checkpoint", "checkpoints/last.ckpt"], tmp_path)
    assert load_bundle(run / "bundle", verify=True).manifest["source"]["checkpoint"] == "checkpoints/last.ckpt"
    # the bundle it replaced is kept, and said so; no model summary, no Lightning warning about the run's own files
    assert load_bundle(run / "bundle.prev", verify=True).manifest["source"]["checkpoint"] == again["source"]["checkpoint"]
    assert "the bundle it replaced is kept as bundle.prev/" in again_proc.stdout
    for said in (again_proc.stdout + again_proc.stderr, proc.stdout + proc.stderr):
        assert "Total params" not in said and "exists and is not empty" not in said, said
    refused(cli(["bundle", "--run", run, "--checkpoint", tmp_path / "x.ckpt"], tmp_path, expect_ok=False),
            "is not a checkpoint of")


def test_bundle_refuses_a_run_that_has_not_finished_training(quickstart, tmp_path, cli):
    cli(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "2", "--trainer.max_steps", "8"],
        tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    refused(cli(["bundle", "--run", run], tmp_path, expect_ok=False), "has trained 1 of its 2 epochs", "--ckpt_path last")
    refused(cli(["bundle", "--run", tmp_path / "nowhere"], tmp_path, expect_ok=False), "is not a run folder")
