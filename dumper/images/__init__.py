"""Image sets in CRIU's on-disk format, with dumper's own additions.

Write (the dump pipeline):

    ImageSetWriter(path, force=False, compress=None | "zstd", level=3, threads=0, *,
                   strategy, profile, host_kind="model", frame_size=4 MiB, root_pid=None)
      .add_shared_object(SharedObject(shmid, kind, size, dev, ino, name), runs, chunks) -> id
      .add_task(pid, ppid, comm, vmas: [Vma], *, pgid, sid, threads, state, exe, mm)
      .add_private_pages(pid, runs: [(vaddr, nr_pages[, flags])], chunks: Iterable[bytes])
      .add_truth(pid, runs: Iterable[(vaddr, [u64 page digest])]) -> task digest
      .add_cow(pid, [CowRun(pid, vaddr, nr_pages, src_pid, src_vaddr)])
      .commit() -> path           (or use it as a context manager; .abort() drops it all)

Read (restore, verify, inspect):

    ImageSet.open(path, verify=True) -> ImageSet   # ImageError on anything wrong
      .meta: DumpMeta | None, .tasks: {pid: Task}, .objects: {shmid: SharedObject},
      .pages: {pages_id: PagesInfo}, .truths: {pid: Truth}, .root
      .iter_pages(pid), .iter_object_pages(shmid), .iter_task_pages(pid),
      .read_page(pid, addr) -> PageLookup, .iter_truth(pid), .close()

Modules: codec (framing, magic table), jsonfmt (crit-style JSON), pages (raw/zstd stores),
checksums, records (dataclasses), writer, reader, diff, golden (images/), protogen
(`make proto`), proto/ (generated). ImageError's str is `FILE: what is wrong (at offset N)`.
"""

# Loaded on first use (PEP 562): `dumper.images.flags` and the other light modules must not
# pay for numpy and protobuf, so the CLI starts fast.
_EXPORTS = {
    "page_digest": "checksums", "page_digests": "checksums", "task_digest": "checksums",
    "ImageError": "errors", "ImageSet": "reader", "PageLookup": "reader",
    "CowRun": "records", "DumpMeta": "records", "PageRun": "records", "PagesInfo": "records",
    "SharedObject": "records", "Task": "records", "Truth": "records", "Vma": "records",
    "ImageSetExists": "writer", "ImageSetWriter": "writer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
