//! The shared conformance suite against real S3 servers started on
//! loopback: SeaweedFS and moto, each test in a prefix of its own. And the
//! failure kinds of an S3 endpoint that is down.

use std::io;
use std::time::Duration;

use slimta::Envelope;
use slimta::queue::QueueStorage;
use slimta_cloud::credentials::{AwsKeys, Secret};
use slimta_cloud::{CloudStorage, ObjectBackend, S3Backend, S3Settings};
use slimta_storage_suite::Fixture;

fn settings(endpoint: String, bucket: &str, keys: (&str, &str)) -> S3Settings {
    S3Settings {
        bucket: bucket.into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        keys: AwsKeys {
            access_key_id: keys.0.into(),
            secret_access_key: Secret::new(keys.1),
            session_token: None,
        },
        timeout: Duration::from_secs(20),
    }
}

fn fixture_on(settings: S3Settings) -> Fixture<CloudStorage<S3Backend>> {
    let prefix = format!("t-{}/", uuid::Uuid::new_v4().simple());
    let open = move |settings: &S3Settings, prefix: &str| {
        CloudStorage::new(S3Backend::new(settings).unwrap(), prefix)
    };
    let storage = open(&settings, &prefix);
    Fixture {
        storage,
        reopen: Some(Box::new(move |old| {
            drop(old);
            open(&settings, &prefix)
        })),
        guard: Box::new(()),
    }
}

mod seaweedfs {
    use super::*;
    use test_peers::seaweedfs::{SEAWEEDFS_KEYS, SeaweedFs};

    pub(super) fn fixture() -> Fixture<CloudStorage<S3Backend>> {
        let server = SeaweedFs::shared();
        fixture_on(settings(server.endpoint(), "slimta-a", SEAWEEDFS_KEYS))
    }

    slimta_storage_suite::storage_conformance!(fixture());

    #[tokio::test]
    async fn create_only_is_enforced() {
        let server = SeaweedFs::shared();
        let s3 = S3Backend::new(&settings(server.endpoint(), "slimta-a", SEAWEEDFS_KEYS)).unwrap();
        let key = format!("t-{}/once", uuid::Uuid::new_v4().simple());
        s3.put_new(&key, b"first".to_vec()).await.unwrap();
        let e = s3.put_new(&key, b"second".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(s3.get(&key).await.unwrap(), b"first");
        s3.delete(&key).await.unwrap();
        assert_eq!(
            s3.get(&key).await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // Deleting what is not there is not an error.
        s3.delete(&key).await.unwrap();
    }

    #[tokio::test]
    async fn lists_more_than_one_page() {
        let server = SeaweedFs::shared();
        let s3 = S3Backend::new(&settings(server.endpoint(), "slimta-a", SEAWEEDFS_KEYS)).unwrap();
        let prefix = format!("t-{}/", uuid::Uuid::new_v4().simple());
        for i in 0..1100 {
            s3.put_new(&format!("{prefix}k/{i:05}"), Vec::new())
                .await
                .unwrap();
        }
        assert_eq!(s3.list(&format!("{prefix}k/")).await.unwrap().len(), 1100);
        // 00010..=00019: a prefix that is not a whole path segment.
        assert_eq!(s3.list(&format!("{prefix}k/0001")).await.unwrap().len(), 10);
    }
}

mod moto {
    use super::*;
    use test_peers::moto::Moto;

    fn server() -> &'static Moto {
        static BUCKET: std::sync::Once = std::sync::Once::new();
        let server = Moto::shared();
        BUCKET.call_once(|| server.create_bucket("slimta-moto"));
        server
    }

    pub(super) fn fixture() -> Fixture<CloudStorage<S3Backend>> {
        fixture_on(settings(
            server().endpoint(),
            "slimta-moto",
            ("test", "test"),
        ))
    }

    slimta_storage_suite::storage_conformance!(fixture());

    #[tokio::test]
    async fn create_only_is_enforced() {
        let s3 = S3Backend::new(&settings(
            server().endpoint(),
            "slimta-moto",
            ("test", "test"),
        ))
        .unwrap();
        let key = format!("t-{}/once", uuid::Uuid::new_v4().simple());
        s3.put_new(&key, b"first".to_vec()).await.unwrap();
        let e = s3.put_new(&key, b"second".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(s3.get(&key).await.unwrap(), b"first");
    }
}

#[tokio::test]
async fn an_endpoint_that_is_down_fails_fast_with_a_connection_kind() {
    let port = test_peers::free_port();
    let storage = CloudStorage::new(
        S3Backend::new(&settings(
            format!("http://127.0.0.1:{port}"),
            "slimta-a",
            ("test", "testsecret"),
        ))
        .unwrap(),
        "q/",
    );
    let envelope = Envelope::new(
        "a@example.test",
        vec!["b@example.test".into()],
        b"x".to_vec(),
    );
    let e = storage
        .write(&envelope, std::time::SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    let e = storage.load().await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
}
