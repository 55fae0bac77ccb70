"""The pre-commit hook, run by pre-commit itself on a throwaway git repository.

pre-commit installs the hook by pip-installing this project into a virtualenv, which
takes a while, so every test shares one PRE_COMMIT_HOME and one snapshot of the
project: the environment is built once per session.

``pre-commit try-repo`` keeps its environments in a temporary directory of its own,
so each call builds one: one test runs it as a user would, and the others use a
config that names a git snapshot of the working tree by path and commit, which tests
the same files and lets the environment be reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import qemu_img

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("pre_commit") is None,
        reason="pre-commit is not installed",
    ),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img"),
]

ROOT = Path(__file__).resolve().parent.parent
# What `pip install .` reads; the rest of the tree (tests, samples) is not needed.
PROJECT_FILES = (".pre-commit-hooks.yaml", "pyproject.toml", "README.md")
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 1073741824\n"
)


# Identity and config are given here so the tests do not depend on the user's.
GIT = ["git", "-c", "user.name=qcow2check tests", "-c", "user.email=t@t"]
GIT += ["-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [*GIT, *args], cwd=cwd, env=clean_env(), check=True, capture_output=True
    )
    return result.stdout.decode().strip()


def clean_env(**extra: str) -> dict[str, str]:
    # A GIT_DIR or GIT_INDEX_FILE inherited from an outer git hook would point git
    # at the wrong repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(NO_COLOR="1", **extra)
    return env


@pytest.fixture(scope="session")
def hook_repo(tmp_path_factory) -> tuple[Path, str]:
    """A one-commit git repository holding the project as it is in the working
    tree, committed or not; returns its path and commit."""
    repo = tmp_path_factory.mktemp("hook-repo")
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(
        ROOT / "qcow2check",
        repo / "qcow2check",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "snapshot", cwd=repo)
    return repo, git("rev-parse", "HEAD", cwd=repo)


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")


def make_project(path: Path, hook_repo: tuple[Path, str]) -> Path:
    """A git repository whose pre-commit config uses the hook, with an accepted
    image, a rejected (zstd) one, a Git LFS pointer and a text file, all staged."""
    repo, rev = hook_repo
    path.mkdir()
    git("init", "-q", cwd=path)
    (path / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {repo}\n  rev: {rev}\n  hooks:\n  - id: qcow2check\n"
    )
    for name, options in (("accepted.qcow2", []), ("rejected.qcow2", ["zstd"])):
        create = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if options:
            create += ["-o", "compression_type=zstd"]
        subprocess.run([*create, str(path / name), "1G"], check=True)
    (path / "pointer.qcow2").write_text(LFS_POINTER)
    (path / "notes.txt").write_text("not an image\n")
    git("add", "-A", cwd=path)
    return path


@pytest.fixture(scope="session")
def project(tmp_path_factory, hook_repo) -> Path:
    return make_project(tmp_path_factory.mktemp("project") / "repo", hook_repo)


def pre_commit(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=cwd,
        env=clean_env(PRE_COMMIT_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_hook(home: Path, project: Path, *files: str):
    return pre_commit(
        home, project, "run", "qcow2check", "--color=never", "--files", *files
    )


def test_accepted_image_passes(pre_commit_home, project):
    result = run_hook(pre_commit_home, project, "accepted.qcow2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed" in result.stdout


def test_rejected_image_fails_with_the_rule(pre_commit_home, project):
    result = run_hook(pre_commit_home, project, "accepted.qcow2", "rejected.qcow2")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed" in result.stdout
    assert "rejected.qcow2: rejected" in result.stdout
    assert "[compression-type]" in result.stdout
    assert "fix: qemu-img convert" in result.stdout


def test_lfs_pointer_is_checked_and_fails(pre_commit_home, project):
    result = run_hook(pre_commit_home, project, "pointer.qcow2")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "[not-qcow2]" in result.stdout
    assert "LFS" in result.stdout


def test_other_files_are_not_passed_to_the_hook(pre_commit_home, project):
    result = run_hook(pre_commit_home, project, "notes.txt")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "(no files to check)Skipped" in result.stdout


def test_installed_hook_refuses_the_commit(pre_commit_home, hook_repo, tmp_path):
    repo = make_project(tmp_path / "repo", hook_repo)
    git("rm", "-q", "--cached", "pointer.qcow2", cwd=repo)
    installed = pre_commit(pre_commit_home, repo, "install")
    assert installed.returncode == 0, installed.stdout + installed.stderr

    refused = subprocess.run(
        [*GIT, "commit", "-q", "-m", "add images"],
        cwd=repo,
        env=clean_env(PRE_COMMIT_HOME=str(pre_commit_home)),
        capture_output=True,
        text=True,
    )

    assert refused.returncode != 0
    assert "[compression-type]" in refused.stdout + refused.stderr
    assert git("rev-list", "--all", cwd=repo) == ""


def test_try_repo_passes_an_accepted_image_and_fails_a_rejected_one(tmp_path):
    # The command the issue tracker and pre-commit's docs give for trying a hook
    # before a release; each call builds its own environment (about 10 s).
    repo = tmp_path / "images"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    accepted, rejected = repo / "accepted.qcow2", repo / "rejected.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(accepted), "1G")
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        str(rejected),
        "1G",
    )
    git("add", ".", cwd=repo)
    git("commit", "-qm", "images", cwd=repo)

    def try_repo(image: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pre_commit",
                "try-repo",
                str(ROOT),
                "qcow2check",
                "--files",
                image.name,
            ],
            cwd=repo,
            env=clean_env(PRE_COMMIT_HOME=str(tmp_path / "cache")),
            capture_output=True,
            text=True,
            timeout=600,
        )

    passed = try_repo(accepted)
    failed = try_repo(rejected)

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "[compression-type]" in failed.stdout
