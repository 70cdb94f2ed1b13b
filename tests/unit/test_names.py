"""The one rule for model names and versions (archiver.names), as every entry point applies it."""

import pytest

from torchship.archiver.names import (
    MAX_NAME_LENGTH,
    MAX_VERSION_LENGTH,
    InvalidName,
    check_name,
    check_name_version,
    check_version,
)

GOOD_NAMES = ["mlp", "m", "M", "7", "sentiment", "two-tower_v2", "a.b", "mlp-1.0", "x" * MAX_NAME_LENGTH]

# Each one is a name a user (or an attacker) could type; none may reach a path, a URL or the registry.
BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "../probemm",
    "a/b",
    "/abs",
    "a\\b",
    "x/..",
    "a..b",
    "..x",
    "x..",
    ".hidden",
    "-x",
    "_x",
    "a b",
    " mlp",
    "mlp ",
    "a\nb",
    "mlp\n",
    "\nmlp",
    "a\rb",
    "a\tb",
    "a\x00b",
    "mlp\x00",
    "a:b",
    "a?b",
    "a#b",
    "a%2Fb",
    "a*",
    "[m]",
    "a;b",
    "a'b",
    'a"b',
    "<m>",
    "a&b",
    "a+b",
    "a=b",
    "~m",
    "mlр",  # Cyrillic er (U+0440), looks like "mlp"
    "аpple",  # Cyrillic a
    "ｍｌｐ",  # fullwidth
    "mlp\u200b",  # zero-width space
    "\u202emlp",  # right-to-left override
    "café",  # non-ASCII letter
    "١٢",  # Arabic-Indic digits (\d would take them)
    "x" * (MAX_NAME_LENGTH + 1),
    "x" * 100_000,
]
NOT_STR = [None, 1, 1.0, b"mlp", bytearray(b"mlp"), ["mlp"], ("mlp",), {"mlp": 1}, True, object()]


def short_id(value) -> str:
    return ascii(value)[:30]


GOOD_VERSIONS = ["1.0", "2.1-rc1", "10", "1", "0.0.1", "v2", "2024_01", "1" * MAX_VERSION_LENGTH]
BAD_VERSIONS = [
    "",
    ".",
    "..",
    "1..0",
    "../1",
    "1/0",
    "/1",
    "-1",
    ".1",
    "_1",
    "1.0\n",
    "1\n0",
    "1\x00",
    "1 0",
    "1.0+local",
    "１.０",
    "1.٠",
    "1" * (MAX_VERSION_LENGTH + 1),
    "all",
    "ALL",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names_pass_unchanged(name):
    assert check_name(name) is name


@pytest.mark.parametrize("name", BAD_NAMES, ids=short_id)
def test_invalid_names_are_refused_with_one_clear_line(name):
    with pytest.raises(InvalidName) as info:
        check_name(name)
    message = str(info.value)
    assert message.startswith("invalid model name ")
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert len(message) < 300  # a 100,000-character name is not echoed back in full
    assert "letters, digits" in message  # says what is allowed


@pytest.mark.parametrize("value", NOT_STR, ids=short_id)
def test_only_strings_are_names_or_versions(value):
    with pytest.raises(InvalidName):
        check_name(value)
    with pytest.raises(InvalidName):
        check_version(value)


@pytest.mark.parametrize("version", GOOD_VERSIONS)
def test_valid_versions_pass_unchanged(version):
    assert check_version(version) is version


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=short_id)
def test_invalid_versions_are_refused_with_one_clear_line(version):
    with pytest.raises(InvalidName) as info:
        check_version(version)
    message = str(info.value)
    assert message.startswith("invalid version ") and "\n" not in message and "1.0" in message


def test_invalid_name_is_bad_input():
    """A ValueError: the CLI answers it with exit 7 (bad input), like any other bad value."""
    assert issubclass(InvalidName, ValueError)
    from torchship.cli import exit_code_for

    assert exit_code_for(InvalidName("x")) == 7


def test_name_and_version_together():
    assert check_name_version("mlp", "1.0") == ("mlp", "1.0")
    assert check_name_version("mlp", None) == ("mlp", None)  # "the default" / "the newest"
    with pytest.raises(InvalidName, match="model name"):
        check_name_version("../mlp", "1.0")
    with pytest.raises(InvalidName, match="version"):
        check_name_version("mlp", "../1.0")
    with pytest.raises(InvalidName, match="model name"):
        check_name_version(None, None)


def test_every_valid_name_is_a_safe_file_name_and_url_segment():
    """What the rule is for: `<name>-<version>.mar` stays in the model store, and the name needs no
    escaping in a URL path."""
    from pathlib import PurePosixPath
    from urllib.parse import quote

    for name in GOOD_NAMES:
        for version in GOOD_VERSIONS:
            file_name = f"{name}-{version}.mar"
            assert PurePosixPath(file_name).name == file_name and not file_name.startswith(".")
        assert quote(name, safe="") == name
