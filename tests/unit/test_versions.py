from torchship.ops.versions import latest_version, next_version, store_versions


def test_versions_sort_numerically_and_next_is_a_new_major(tmp_path):
    assert next_version(tmp_path, "m") == "1.0"
    for v in ("1.0", "2.0", "10.0", "9.1"):
        (tmp_path / f"m-{v}.mar").write_bytes(b"")
    (tmp_path / "m-other-1.0.mar").write_bytes(b"")  # another model's archive
    assert store_versions(tmp_path, "m") == ["1.0", "2.0", "9.1", "10.0"]
    assert latest_version(tmp_path, "m") == "10.0"
    assert next_version(tmp_path, "m") == "11.0"


def test_a_name_is_never_a_path_or_a_wildcard(tmp_path):
    import pytest

    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "probemm-1.0.mar").write_bytes(b"")  # beside the store, not in it
    (store / "m-1.0.mar").write_bytes(b"")
    for bad in ("../probemm", "*", "m*", "[m]", "?", "a/b", "", "m\n"):
        with pytest.raises(ValueError, match="invalid model name"):
            store_versions(store, bad)
        with pytest.raises(ValueError, match="invalid model name"):
            latest_version(store, bad)
        with pytest.raises(ValueError, match="invalid model name"):
            next_version(store, bad)


def test_only_archives_with_valid_versions_count(tmp_path):
    for v in ("1.0", "2.0", "1..0", "3.0 ", "4.0\n", "5.0+x", "６.0"):
        (tmp_path / f"m-{v}.mar").write_bytes(b"")
    assert store_versions(tmp_path, "m") == ["1.0", "2.0"]
    assert next_version(tmp_path, "m") == "3.0"
