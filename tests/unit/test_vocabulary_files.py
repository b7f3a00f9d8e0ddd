"""The definitions' vocabulary needs no package file once imported (udfs/definitions/vocabulary.py).

In thread mode a TaskManager keeps the modules a job imported for later jobs of the same build,
and those modules read package files from the first job's extracted directory, which Flink
deletes when that job ends: a later job whose engine first asked for the vocabulary then failed
in open() with FileNotFoundError (seen after a TaskManager kill, when the restored job never
asked for it)."""

from udfs.definitions import vocabulary

CACHED = (vocabulary.metadata_fields, vocabulary.event_types, vocabulary.event_sources)


def _clear_caches():
    for function in (*CACHED, vocabulary._schema):
        getattr(function, "cache_clear", lambda: None)()


def test_the_vocabulary_reads_no_package_file_after_import(monkeypatch):
    def directory_gone(package):
        raise FileNotFoundError(f"{package}: the first job's directory was deleted")

    monkeypatch.setattr(vocabulary, "files", directory_gone)
    _clear_caches()
    try:
        assert vocabulary.metadata_fields()["lifetime_value"].kind == "number"
        assert "ADD_TO_CART" in vocabulary.event_types()
        assert "WEB" in vocabulary.event_sources()
    finally:
        _clear_caches()
