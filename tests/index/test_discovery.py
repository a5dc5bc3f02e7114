"""Discovery: ignore rules, secret material, binary/vendored/minified/huge files, multi-root."""

from __future__ import annotations

from pathlib import Path

from index.discovery import MAX_FILE_BYTES, discover
from index.ranking import search
from index.workspace import WorkspaceIndex

from .conftest import git_init, write

CANARY = "CANARYc4n4ry9z"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA"
    + CANARY
    + "\n-----END RSA PRIVATE KEY-----\n"
)
SECRET_FILES: dict[str, str | bytes] = {
    ".env": f"API_TOKEN={CANARY}\n",
    ".env.production": f"DB_PASSWORD={CANARY}\n",
    "deploy/server.pem": f"{CANARY}\n",
    "deploy/tls.key": f"{CANARY}\n",
    "home/id_rsa": f"{CANARY}\n",
    "home/id_rsa.pub": f"ssh-rsa {CANARY}\n",
    "home/.aws/credentials": f"[default]\nkey = {CANARY}\n",
    "ops/kubeconfig": f"users:\n- token: {CANARY}\n",
    "src/keys.py": f'KEY = """{PRIVATE_KEY}"""\n',
    "src/aws.py": f'ACCESS = "AKIAIOSFODNN7EXAMPL3"  # {CANARY}\n',
    "src/gh.py": f'TOKEN = "ghp_{"a1B2" * 9}"  # {CANARY}\n',
}


def _everything_stored(cache: Path) -> bytes:
    return b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())


def _index(roots: list[Path]) -> tuple[WorkspaceIndex, dict[str, str]]:
    workspace = WorkspaceIndex(roots)
    report = workspace.refresh()
    return workspace, report.skipped


def test_secret_canaries_are_never_indexed(tmp_path: Path, index_cache: Path) -> None:
    root = tmp_path / "repo"
    write(root, {**SECRET_FILES, "src/app.py": "def handler():\n    return 1\n"})
    git_init(root)
    workspace, skipped = _index([root])
    assert workspace.paths() == {"src/app.py"}
    for name in SECRET_FILES:
        assert name in skipped, name
        assert "secret" in skipped[name]
    assert skipped["src/keys.py"] == "secret content (private-key)"
    assert skipped["src/aws.py"] == "secret content (aws-access-key-id)"
    assert CANARY.encode() not in _everything_stored(index_cache)
    assert search(workspace, CANARY, 10) == []


def test_gitignore_is_honoured_in_a_git_repo(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(
        root,
        {
            ".gitignore": "build/\n*.log\n",
            "src/main.py": "def main():\n    pass\n",
            "build/gen.py": "def generated():\n    pass\n",
            "debug.log": "noise\n",
            ".bastionignore": "docs/\n",
            "docs/guide.md": "# guide\n",
        },
    )
    git_init(root)
    write(root, {"src/new_untracked.py": "def fresh():\n    pass\n", "late.log": "x\n"})
    workspace, _ = _index([root])
    assert workspace.paths() == {
        ".gitignore",
        ".bastionignore",
        "src/main.py",
        "src/new_untracked.py",
    }


def test_gitignore_is_honoured_without_git(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(
        root,
        {
            ".gitignore": "*.log\n/out/\n",
            "a.py": "x = 1\n",
            "sub/.gitignore": "local_only.py\n",
            "sub/b.py": "y = 2\n",
            "sub/local_only.py": "z = 3\n",
            "out/c.py": "w = 4\n",
            "trace.log": "x\n",
            "node_modules/lib/index.js": "module.exports = 1\n",
        },
    )
    workspace, _ = _index([root])
    assert workspace.paths() == {".gitignore", "a.py", "sub/.gitignore", "sub/b.py"}


def test_binary_vendored_minified_and_huge_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(
        root,
        {
            "ok.py": "def ok():\n    pass\n",
            "blob.dat": b"\x00\x01\x02binary",
            "latin1.txt": "caf\xe9".encode("latin-1"),
            "logo.png": b"\x89PNG\r\n",
            "static/app.min.js": "var a=1;",
            "static/bundle.js": "var a=1;" * 2000,
            "vendor/dep/dep.go": "package dep\n",
            "data/huge.txt": "x\n" * (MAX_FILE_BYTES // 2 + 1),
        },
    )
    git_init(root)
    workspace, skipped = _index([root])
    assert workspace.paths() == {"ok.py"}
    assert skipped["blob.dat"] == "binary"
    assert skipped["latin1.txt"].startswith("binary")
    assert skipped["logo.png"] == "binary"
    assert skipped["static/app.min.js"] == "minified"
    assert skipped["static/bundle.js"].startswith("minified")
    assert skipped["vendor/dep/dep.go"].startswith("vendored")
    assert skipped["data/huge.txt"].startswith("huge")


def test_multi_root_workspace(tmp_path: Path) -> None:
    front = tmp_path / "front"
    back = tmp_path / "back"
    write(front, {"ui.ts": "export function renderWidget(): void {}\n"})
    write(back, {"api.py": "def serve_widget():\n    pass\n", ".env": f"X={CANARY}\n"})
    git_init(back)
    workspace, skipped = _index([front, back])
    assert workspace.paths() == {"front/ui.ts", "back/api.py"}
    assert skipped == {"back/.env": "secret file name (.env)"}
    paths = {s.path for s in search(workspace, "widget", 5)}
    assert paths == {"front/ui.ts", "back/api.py"}
    assert workspace.file_path("back/api.py") == (back / "api.py").resolve()


def test_candidates_carry_their_stat_and_symlinks_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, {"a.py": "x = 1\n", "sub/b.py": "y = 2\n"})
    (root / "link.py").symlink_to(root / "a.py")
    found = discover([root])
    assert [c.relpath for c in found.candidates] == ["a.py", "sub/b.py"]
    for candidate in found.candidates:
        info = candidate.path.stat()
        assert (candidate.size, candidate.mtime_ns) == (info.st_size, info.st_mtime_ns)
