"""Checkpoints that lose nothing: exact resume, refusal of a different run, crash safety, pruning, signals."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
import torch
from safetensors.torch import load_file

from mm_excitor import load_adapter
from mm_excitor.train import ResumeMismatchError, Trainer, TrainingInterrupted
from tests.train.helpers import TokenDataset, adapter_tensors, collate, make_config, make_model, make_sampler, read_metrics

REPO = Path(__file__).resolve().parents[2]
ITEMS = 20  # 5 micro-batches of 4 per epoch with 2 per step: accumulation windows straddle epoch boundaries
RUN = dict(max_steps=8, grad_accum_steps=2, warmup_steps=2, save_every_steps=2, eval_every_steps=3, keep_last=2)


def noisy_samples(model):
    """A sample_fn that draws from every RNG, to prove evaluation cannot perturb training."""
    return [f"{torch.rand(1).item():.3f} {random.random():.3f}", {"gate": float(model.model.layers[3].self_attn.k_proj.gate[0])}]


def train(output_dir: Path, *, resume=None, stop_at=None, model=None, run_config=None, **overrides):
    def stop(trainer, record):
        if record["step"] == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag; the trainer stops after this step

    trainer = Trainer(
        model if model is not None else make_model(dropout=0.1),  # dropout: the torch RNG matters
        TokenDataset(ITEMS),
        collate,
        make_sampler(ITEMS, seed=3),
        make_config(output_dir, **{**RUN, **overrides}),
        val_dataset=TokenDataset(6, offset=50),
        sample_fn=noisy_samples,
        callbacks=[stop],
        run_config=run_config,
    )
    return trainer.fit(resume=resume)


def losses(output_dir: Path, kind: str = "train") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(output_dir, kind)}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs (max {(a[name] - b[name]).abs().max()})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    output_dir = tmp_path_factory.mktemp("reference")
    train(output_dir)
    return output_dir


def test_a_run_stopped_at_step_k_and_resumed_equals_the_uninterrupted_run(reference, tmp_path):
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tmp_path, stop_at=3)
    assert stopped.value.code == 128 + signal.SIGTERM and stopped.value.step == 3
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert sorted(losses(tmp_path)) == [1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] == "SIGTERM"

    # Resume with a different evaluation cadence and TensorBoard on: neither may change the trajectory.
    summary = train(tmp_path, resume="latest", eval_every_steps=2, tensorboard=True)
    assert summary["steps"] == 8 and summary["resumed_from"].endswith("step-3")
    assert losses(tmp_path) == losses(reference)  # exact float equality, step by step
    assert sorted(losses(tmp_path)) == list(range(1, 9))  # every step logged once
    assert losses(tmp_path, "val")[6] == losses(reference, "val")[6]
    assert losses(tmp_path, "val")[8] == losses(reference, "val")[8]
    assert_same_tensors(adapter_tensors(tmp_path / "checkpoints/step-8"), adapter_tensors(reference / "checkpoints/step-8"))
    assert_same_tensors(
        load_file(str(tmp_path / "checkpoints/step-8/optimizer.safetensors")),
        load_file(str(reference / "checkpoints/step-8/optimizer.safetensors")),
    )
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["samples"] == json.loads((reference / "summary.json").read_text())["samples"] == 8 * 2 * 4


def test_checkpoint_layout_latest_best_and_keep_last(reference):
    checkpoints = reference / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "latest", "step-6", "step-8"]  # keep_last=2
    assert (checkpoints / "latest").read_text().strip() == "step-8"
    for directory in (checkpoints / "step-8", checkpoints / "best"):
        assert sorted(p.name for p in directory.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "checksums.json", "optimizer.safetensors",
            "trainer_state.json",
        ]
        listed = json.loads((directory / "checksums.json").read_text())["files"]
        assert sorted(listed) == ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
                                  "trainer_state.json"]
        assert listed["optimizer.safetensors"]["bytes"] == (directory / "optimizer.safetensors").stat().st_size
    model = load_adapter(make_model(seed=7, base_seed=0), checkpoints / "step-8")  # other init, same base
    trained = adapter_tensors(checkpoints / "step-8")
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if p.requires_grad)
    state = json.loads((checkpoints / "step-8" / "trainer_state.json").read_text())  # plain JSON, no pickle
    assert state["step"] == 8 and state["world_size"] == 1 and state["run_config"]["train"]["blr"] == 0.5
    assert "config" not in state and state["model"]["method"] == "excitor"  # the train config is stored once
    assert state["model"]["identity"]["language_model"]["weights_fingerprint"]
    tensors = load_file(str(checkpoints / "step-8" / "optimizer.safetensors"))
    assert any(k.endswith("::exp_avg") for k in tensors) and tensors["rng::0::torch"].dtype == torch.uint8
    summary = json.loads((reference / "summary.json").read_text())
    best = json.loads((checkpoints / "best" / "trainer_state.json").read_text())
    assert summary["best_checkpoint"] == str(checkpoints / "best") and best["step"] == summary["best_step"]
    assert summary["best_val_loss"] == min(losses(reference, "val").values())
    assert summary["steps"] == 8 and summary["tokens"] == 8 * 8 * 12 and summary["peak_memory_bytes"] > 0
    samples = read_metrics(reference, "samples")
    assert [r["step"] for r in samples] == [3, 6, 8] and len(samples[0]["samples"]) == 2
    assert not list(reference.rglob("*.pt")) and not list(reference.rglob("*.bin")) and not list(reference.rglob(".*"))


def test_resume_refuses_another_trajectory_and_lists_every_difference(reference, tmp_path, capsys):
    checkpoint = reference / "checkpoints" / "step-6"
    with pytest.raises(ResumeMismatchError) as error:
        train(tmp_path / "a", resume=checkpoint, blr=0.25)
    assert "train.blr: checkpoint 0.5, this run 0.25" in str(error.value)
    # the entry points pass their whole config; settings that cannot change the trajectory may differ, and say so
    free = ("decoding.*", "evaluate", "data.root")

    def resume(output_dir, data_identity, run_config, **overrides):
        trainer = Trainer(make_model(dropout=0.1), TokenDataset(ITEMS), collate, make_sampler(ITEMS, seed=3),
                          make_config(output_dir, **{**RUN, **overrides}), run_config=run_config,
                          resume_free_keys=free, data_identity=data_identity)
        return trainer.fit(resume="latest")

    original = {"data": {"root": "/coco", "max_length": 64}, "decoding": {"num_beams": 1}, "evaluate": True}
    resume(tmp_path / "r", {"sha256": "abc"}, original, max_steps=2)
    moved = {"data": {"root": "/elsewhere", "max_length": 64}, "decoding": {"num_beams": 3}, "evaluate": False}
    summary = resume(tmp_path / "r", {"sha256": "abc"}, moved, max_steps=3, log_every_steps=5)
    assert summary["steps"] == 3
    listed = capsys.readouterr().out
    for line in ("data.root: checkpoint '/coco', this run '/elsewhere'", "decoding.num_beams: checkpoint 1, this run 3",
                 "evaluate: checkpoint True, this run False", "train.max_steps: checkpoint 2, this run 3"):
        assert line in listed
    with pytest.raises(ResumeMismatchError) as error:  # the same paths, other training items
        resume(tmp_path / "r", {"sha256": "def"}, moved, max_steps=4)
    assert "data.identity.sha256: checkpoint 'abc', this run 'def'" in str(error.value)
    changed = {**moved, "data": {"root": "/elsewhere", "max_length": 32}}
    with pytest.raises(ResumeMismatchError) as error:  # a data setting the trajectory depends on
        resume(tmp_path / "r", {"sha256": "abc"}, changed, max_steps=4, blr=0.25)
    assert "data.max_length: checkpoint 64, this run 32" in str(error.value)
    assert str(error.value).count("blr") == 1 and "max_steps" not in str(error.value)
    with pytest.raises(ResumeMismatchError, match="weights_fingerprint"):
        train(tmp_path / "b", resume=checkpoint, model=make_model(base_seed=5, dropout=0.1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(FileExistsError, match="train.resume=latest"):
        train(reference)  # a fresh run must not overwrite a run's checkpoints
    summary = train(tmp_path / "c", resume=checkpoint, max_steps=10, log_every_steps=2, keep_last=None)
    assert summary["steps"] == 10 and sorted(losses(tmp_path / "c")) == [8, 10]


def run_child(phases: list[dict], **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.tiny_run", json.dumps(phases)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


def plain_run(output_dir: Path, callbacks=(), **overrides) -> Trainer:
    """In-process twin of tiny_run's default phase."""
    trainer = Trainer(make_model(), TokenDataset(16), collate, make_sampler(16), make_config(output_dir, **overrides),
                      callbacks=callbacks)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("plain")
    plain_run(output_dir, save_every_steps=2)
    return output_dir


def test_sigterm_to_the_process_group_saves_a_checkpoint_and_exits(plain_reference, tmp_path):
    """As from a scheduler: the whole process group, data-loader workers included, gets SIGTERM mid-run."""
    child = run_child(
        [{"output_dir": str(tmp_path), "save_every_steps": 2, "num_workers": 1, "sleep": 0.3, "raise_on_interrupt": True}],
        start_new_session=True,
    )
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith("STEP 2"):
            os.killpg(child.pid, signal.SIGTERM)
            break
    output = "".join(lines) + child.stdout.read()
    assert child.wait(timeout=60) == 128 + signal.SIGTERM, output
    assert "received SIGTERM" in output and "stopped by SIGTERM" in output
    step = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert 2 <= step < 8 and (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step-{step}"
    trainer = Trainer(make_model(), TokenDataset(16), collate, make_sampler(16),
                      make_config(tmp_path, save_every_steps=2, resume="latest"))
    assert trainer.fit()["steps"] == 8
    assert losses(tmp_path) == losses(plain_reference)
    assert_same_tensors(adapter_tensors(tmp_path / "checkpoints/step-8"), adapter_tensors(plain_reference / "checkpoints/step-8"))


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(plain_reference, tmp_path):
    child = run_child([{"output_dir": str(tmp_path), "save_every_steps": 2, "sigkill_in_checkpoint_write_at": 4}])
    output = child.communicate(timeout=120)[0]
    assert child.returncode == -signal.SIGKILL, output
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-2"
    assert not (checkpoints / "step-4").exists()
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".step-4")]  # the torn write, hidden
    load_adapter(make_model(), checkpoints / "step-2")  # the previous checkpoint is intact
    plain_run(tmp_path, save_every_steps=2, resume="latest")
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # leftovers removed
    assert losses(tmp_path) == losses(plain_reference)
    assert_same_tensors(adapter_tensors(checkpoints / "step-8"), adapter_tensors(plain_reference / "checkpoints/step-8"))


def test_fp16_resume_restores_the_grad_scaler_and_a_bf16_base_keeps_fp32_trainables(tmp_path):
    def run(output_dir, **overrides):
        return train(output_dir, precision="fp16", max_steps=4, eval_every_steps=100, **overrides)

    run(tmp_path / "whole")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "split", stop_at=2)
    state = json.loads((tmp_path / "split/checkpoints/step-2/trainer_state.json").read_text())
    assert state["scaler"]["scale"] > 1 and state["scaler"]["_growth_tracker"] == 2
    run(tmp_path / "split", resume="latest")
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert_same_tensors(adapter_tensors(tmp_path / "split/checkpoints/step-4"), adapter_tensors(tmp_path / "whole/checkpoints/step-4"))

    model = make_model(dropout=0.1).to(torch.bfloat16)
    train(tmp_path / "bf16", model=model, precision="bf16", max_steps=2, eval_every_steps=100)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {t.dtype for t in adapter_tensors(tmp_path / "bf16/checkpoints/step-2").values()} == {torch.float32}


def damage(path: Path, *, truncate: bool) -> None:
    """Cut a file to half its size, or flip one byte in its middle (the file stays readable: only checksums tell)."""
    data = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def test_resume_latest_passes_over_a_damaged_checkpoint_to_the_newest_intact_one(plain_reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(plain_reference, run)
    damage(run / "checkpoints/step-8/adapter_model.safetensors", truncate=True)
    capsys.readouterr()
    plain_run(run, save_every_steps=2, resume="latest")
    out = capsys.readouterr().out
    warning, = [line for line in out.splitlines() if "damaged" in line]  # one line naming the damaged checkpoint
    assert "step-8" in warning and "adapter_model.safetensors" in warning and warning.endswith(
        f"resuming from {run / 'checkpoints/step-6'}, the newest intact one")
    assert f"resumed from {run / 'checkpoints/step-6'} at step 6" in out
    assert losses(run) == losses(plain_reference)
    assert_same_tensors(adapter_tensors(run / "checkpoints/step-8"), adapter_tensors(plain_reference / "checkpoints/step-8"))


def test_a_damaged_checkpoint_named_by_hand_or_no_intact_one_is_a_clear_error(plain_reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(plain_reference, run)
    damage(run / "checkpoints/step-6/optimizer.safetensors", truncate=False)
    with pytest.raises(ValueError, match=r"cannot resume from .*step-6: .*optimizer.safetensors: sha256 differs"):
        plain_run(run, save_every_steps=2, max_steps=10, resume="step-6")
    damage(run / "checkpoints/step-8/trainer_state.json", truncate=True)
    with pytest.raises(ValueError, match="no intact checkpoint") as error:
        plain_run(run, save_every_steps=2, max_steps=10, resume="latest")
    found = str(error.value).splitlines()
    assert found[1].startswith("  step-8 (") and "trainer_state.json" in found[1]
    assert found[2].startswith("  step-6 (") and "optimizer.safetensors" in found[2]
    plain_run(run, save_every_steps=2, resume=str(plain_reference / "checkpoints/step-6"))  # another copy, by path
    assert losses(run) == losses(plain_reference)


def test_a_checkpoint_without_checksums_resumes_unverified(plain_reference, tmp_path, capsys):
    """Checkpoints written before checksums existed still resume (and load), with a note that nothing was checked."""
    run = tmp_path / "run"
    shutil.copytree(plain_reference, run)
    (run / "checkpoints/step-6/checksums.json").unlink()
    plain_run(run, save_every_steps=2, resume="step-6")
    assert f"{run / 'checkpoints/step-6'} has no checksums" in capsys.readouterr().out
    assert losses(run) == losses(plain_reference)


def test_a_failed_checkpoint_write_is_one_clear_error_and_a_rerun_resumes_from_the_last_complete_one(
        plain_reference, tmp_path, monkeypatch):
    import mm_excitor.train.state as state

    write = state.atomic_write_bytes

    def full_disk_at_step_6(path, data):
        if ".step-6." in str(path):  # the optimizer state of step 6, in its scratch directory
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(state, "atomic_write_bytes", full_disk_at_step_6)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(OSError) as error:
        plain_run(tmp_path, save_every_steps=2)
    assert str(error.value) == (
        f"could not write checkpoint {checkpoints / 'step-6'} (No space left on device); the last complete "
        f"checkpoint is {checkpoints / 'step-4'} (`latest` names it): free space and rerun with train.resume=latest "
        "to continue from it")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-2", "step-4"]  # nothing half-written
    assert (checkpoints / "latest").read_text().strip() == "step-4"
    monkeypatch.undo()
    plain_run(tmp_path, save_every_steps=2, resume="latest")
    assert losses(tmp_path) == losses(plain_reference)
    assert_same_tensors(adapter_tensors(checkpoints / "step-8"), adapter_tensors(plain_reference / "checkpoints/step-8"))


def test_a_resumed_run_of_another_length_keeps_the_checkpoints_schedule_unless_told_to_replan(reference, tmp_path,
                                                                                              capsys):
    from mm_excitor.train import lr_at

    def lrs(output_dir):
        return {r["step"]: r["lr"] for r in read_metrics(output_dir)}

    for name in ("keep", "replan"):
        with pytest.raises(TrainingInterrupted):
            train(tmp_path / name, stop_at=3)
    capsys.readouterr()
    train(tmp_path / "keep", resume="latest", max_steps=10)
    line, = [line for line in capsys.readouterr().out.splitlines() if "learning-rate schedule" in line]
    assert line.strip() == ("this run stops at step 10; the learning-rate schedule stays the checkpoint's: warm-up 2, "
                            "cosine to min_lr=0 at step 8, then min_lr up to step 10 (train.resume_schedule=replan "
                            "re-plans it)")
    assert {s: v for s, v in losses(tmp_path / "keep").items() if s <= 8} == losses(reference)  # the same trajectory
    assert {s: v for s, v in lrs(tmp_path / "keep").items() if s <= 8} == lrs(reference)
    assert lrs(tmp_path / "keep")[9] == lrs(tmp_path / "keep")[10] == 0.0

    train(tmp_path / "replan", resume="latest", max_steps=10, resume_schedule="replan")
    line, = [line for line in capsys.readouterr().out.splitlines() if "learning-rate schedule" in line]
    assert line.strip() == ("this run stops at step 10; the learning-rate schedule is re-planned from step 4: warm-up "
                            "2, cosine to min_lr=0 at step 10 (was: warm-up 2, cosine to min_lr=0 at step 8)")
    base_lr = lrs(reference)[2]  # the end of warm-up
    assert lrs(tmp_path / "replan") == {**{s: lrs(reference)[s] for s in (1, 2, 3)},
                                        **{s: lr_at(s - 1, base_lr=base_lr, min_lr=0.0, warmup_steps=2, total_steps=10)
                                           for s in range(4, 11)}}
    state = json.loads((tmp_path / "replan/checkpoints/step-10/trainer_state.json").read_text())
    assert state["schedule"]["total_steps"] == 10


def forked_run(output_dir: Path, **overrides) -> tuple[int, IO[str]]:
    """plain_run in a forked child (in its own process group, output silenced) that writes `STEP k` to a pipe after
    each step; forking skips the seconds a new interpreter spends importing torch."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        status = 1
        try:
            os.setsid()
            signal.alarm(120)  # a child that hangs dies, and the test fails instead of waiting forever
            torch.set_num_threads(1)  # as DataLoader workers do: no OpenMP pool inherited from the parent
            os.close(read)
            silent = os.open(os.devnull, os.O_WRONLY)
            os.dup2(silent, 1)
            os.dup2(silent, 2)
            steps = os.fdopen(write, "w", buffering=1)

            def report(trainer, record):
                steps.write(f"STEP {record['step']}\n")
                time.sleep(0.02)

            plain_run(output_dir, callbacks=[report], **overrides)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    return pid, os.fdopen(read)


@pytest.mark.parametrize("seed", [24, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(8))])
def test_sigkill_at_random_points_with_data_loader_workers_and_resuming_each_time_ends_bit_identical(
        plain_reference, tmp_path, seed):
    """As a cluster kills a job: SIGKILL to the whole process group (DataLoader workers included) at random points
    of steps and checkpoint writes, then train.resume=latest, again and again; the end equals the uninterrupted run
    in its adapter, optimizer state (with the RNG states) and logged losses."""
    rng = random.Random(seed)
    run = dict(save_every_steps=1, num_workers=2, resume="latest")
    killed = []
    for _ in range(4):
        pid, steps = forked_run(tmp_path, **run)
        wait_for = rng.randint(1, 3)  # steps of this process, then a random moment in the next one or its write
        seen = []
        for line in steps:
            seen.append(int(line.split()[1]))
            if len(seen) == wait_for:
                time.sleep(rng.uniform(0.0, 0.04))
                os.killpg(pid, signal.SIGKILL)
                break
        steps.close()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            killed.append(seen[-1])
        else:  # the run ended before the kill
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            break
    assert len(killed) >= 2, killed
    plain_run(tmp_path, **run)
    checkpoints = tmp_path / "checkpoints"
    assert losses(tmp_path) == losses(plain_reference)
    assert_same_tensors(adapter_tensors(checkpoints / "step-8"), adapter_tensors(plain_reference / "checkpoints/step-8"))
    assert_same_tensors(load_file(str(checkpoints / "step-8/optimizer.safetensors")),
                        load_file(str(plain_reference / "checkpoints/step-8/optimizer.safetensors")))
