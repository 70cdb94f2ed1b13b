from torchship.versions import latest_version, next_version, store_versions


def test_versions_sort_numerically_and_next_is_a_new_major(tmp_path):
    assert next_version(tmp_path, "m") == "1.0"
    for v in ("1.0", "2.0", "10.0", "9.1"):
        (tmp_path / f"m-{v}.mar").write_bytes(b"")
    (tmp_path / "m-other-1.0.mar").write_bytes(b"")  # another model's archive
    assert store_versions(tmp_path, "m") == ["1.0", "2.0", "9.1", "10.0"]
    assert latest_version(tmp_path, "m") == "10.0"
    assert next_version(tmp_path, "m") == "11.0"
