//! The storage conformance suite (`storage_suite/`) run against the
//! backends that need no external server: memory and disk.

#[macro_use]
mod storage_suite;

mod memory {
    use slimta::queue::MemoryStorage;

    use super::storage_suite::{self, Fixture};

    fn fixture() -> Fixture<MemoryStorage> {
        Fixture::volatile(MemoryStorage::new())
    }

    storage_conformance!(fixture());
}

mod disk {
    use slimta::queue::DiskStorage;

    use super::storage_suite::{self, Fixture};

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
