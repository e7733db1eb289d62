from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from discord_voicerecv import FFmpegNotFound, VoiceRecvError
from discord_voicerecv.ffmpeg import FFMPEG_ENV, find_ffmpeg


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No FFMPEG_BINARY and a PATH holding only an empty directory."""
    monkeypatch.delenv(FFMPEG_ENV, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX executables")


def test_explicit_path_wins_over_everything(bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = executable(tmp_path / "my-ffmpeg")
    monkeypatch.setenv(FFMPEG_ENV, str(executable(tmp_path / "env-ffmpeg")))
    executable(bare_env / "ffmpeg")
    assert find_ffmpeg(mine) == str(mine)


def test_explicit_command_name_is_searched_on_path(bare_env: Path) -> None:
    tool = executable(bare_env / "ffmpeg6")
    assert find_ffmpeg("ffmpeg6") == str(tool)


def test_environment_variable_comes_before_path(
    bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_tool = executable(tmp_path / "env-ffmpeg")
    executable(bare_env / "ffmpeg")
    monkeypatch.setenv(FFMPEG_ENV, str(env_tool))
    assert find_ffmpeg() == str(env_tool)


def test_path_comes_before_the_bundled_build(bare_env: Path) -> None:
    on_path = executable(bare_env / "ffmpeg")
    assert find_ffmpeg() == str(on_path)


def test_bundled_build_is_the_last_resort(bare_env: Path) -> None:
    import imageio_ffmpeg

    found = find_ffmpeg()
    assert found == imageio_ffmpeg.get_ffmpeg_exe()
    assert os.access(found, os.X_OK)


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_a_wrong_explicit_choice_is_an_error_not_skipped(
    where: str, bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable(bare_env / "ffmpeg")
    missing = tmp_path / "nope" / "ffmpeg"
    if where == "environment":
        monkeypatch.setenv(FFMPEG_ENV, str(missing))
    with pytest.raises(FFmpegNotFound, match="nope"):
        find_ffmpeg(missing if where == "argument" else None)


def test_nothing_found_says_how_to_install(bare_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the ffmpeg extra is not installed
    with pytest.raises(FFmpegNotFound) as info:
        find_ffmpeg()
    assert isinstance(info.value, VoiceRecvError)
    assert "pip install discord-voicerecv[ffmpeg]" in str(info.value)
    assert FFMPEG_ENV in str(info.value)
