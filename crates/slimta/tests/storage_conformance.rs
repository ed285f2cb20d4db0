//! The storage conformance suite (`storage_suite/`) run against the
//! backends that need no external server: memory and disk.

mod memory {
    use slimta::queue::MemoryStorage;

    use slimta_storage_suite::{Fixture, storage_conformance};

    fn fixture() -> Fixture<MemoryStorage> {
        Fixture::volatile(MemoryStorage::new())
    }

    storage_conformance!(fixture());
}

mod disk {
    use slimta::queue::DiskStorage;

    use slimta_storage_suite::{Fixture, storage_conformance};

    fn fixture() -> Fixture<DiskStorage> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let storage = DiskStorage::open(&path).unwrap();
        Fixture {
            storage,
            reopen: Some(Box::new(move |old: DiskStorage| {
                drop(old);
                DiskStorage::open(&path).unwrap()
            })),
            guard: Box::new(dir),
        }
    }

    storage_conformance!(fixture());
}
