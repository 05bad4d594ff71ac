//! The spool survives an upgrade: a spool written by release 0.1.0 (committed under
//! `tests/fixtures/spool-0.1.0/`) opens in this build with everything in it; a spool from
//! before format versions were recorded is stamped; a spool of a newer format is refused with
//! a message that says what to do, and left byte for byte as it was.
//!
//! The fixture is written by `write_fixture` below, with the spool API of the release it is
//! named after. Never regenerate it with a later version: it stands for files in the field.
//! (`BREAKWATER_WRITE_FIXTURES=1 cargo test -p breakwater-gateway --test spool_format --
//! --ignored write_fixture`, only when cutting a release that changes the format, into a new
//! directory named after that release.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use breakwater_gateway::spool::{self, Spool, SpoolError, SpoolRecord};
use breakwater_protocol::{envelope, Batch, DeviceId, Reading};
use redb::{Database, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GATEWAY: &str = env!("CARGO_BIN_EXE_breakwater-gateway");

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-0.1.0")
}

/// The batches of the fixture, in acceptance order.
fn batches() -> Vec<Batch> {
    let batch = |dev: &str, epoch: u64, first_seq: u64, n: u64| Batch {
        device: DeviceId::parse(dev).unwrap(),
        epoch,
        first_seq,
        readings: (0..n)
            .map(|i| {
                let seq = first_seq + i;
                Reading::new("temp", 20.5 + seq as f64, 1_700_000_000_000 + seq)
            })
            .collect(),
    };
    vec![
        batch("press-01", 7, 1, 3),
        batch("press-02", 11, 1, 2),
        batch("press-01", 7, 4, 2),
    ]
}

fn record(b: &Batch, i: u64) -> SpoolRecord {
    SpoolRecord::from_batch(b, envelope::encode_batch(b), 1_700_000_100_000 + i)
}

/// Writes the fixture: three batches, the first one delivered (deleted).
#[test]
#[ignore = "writes the committed fixture; see the module doc"]
fn write_fixture() {
    if std::env::var_os("BREAKWATER_WRITE_FIXTURES").is_none() {
        return;
    }
    let dir = fixture_dir();
    let _ = std::fs::remove_file(dir.join(spool::FILE_NAME));
    let (s, _) = Spool::open(&dir, 1 << 30).unwrap();
    let recs: Vec<SpoolRecord> = batches()
        .iter()
        .zip(0..)
        .map(|(b, i)| record(b, i))
        .collect();
    for r in &recs {
        assert!(s.reserve(r.size()));
    }
    let insert: Vec<(u64, &SpoolRecord)> = (0..).zip(recs.iter()).collect();
    s.commit(&insert, &[]).unwrap();
    s.commit(&[], &[0]).unwrap();
}

/// A copy of the fixture to open (opening may write: redb's recovery, a migration).
fn copy_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join(spool::FILE_NAME),
        tmp.path().join(spool::FILE_NAME),
    )
    .unwrap();
    tmp
}

fn set_format(dir: &Path, format: Option<u64>) {
    let db = Database::open(dir.join(spool::FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        match format {
            Some(f) => {
                meta.insert("format", f).unwrap();
            }
            None => {
                meta.remove("format").unwrap();
            }
        }
    }
    txn.commit().unwrap();
}

fn format_of(dir: &Path) -> Option<u64> {
    let db = Database::open(dir.join(spool::FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("format").unwrap().map(|v| v.value())
}

/// Everything the fixture holds is there, in order, and the spool takes new batches after it.
fn assert_fixture_contents(dir: &Path) {
    let expected = batches();
    {
        let (s, rec) = Spool::open(dir, 1 << 30).unwrap();
        assert_eq!(rec.records, 2);
        assert_eq!(rec.cursors["press-01"], (7, 5));
        assert_eq!(rec.cursors["press-02"], (11, 2));
        assert_eq!(rec.pending["press-01"], (7, vec![(4, 5)]));
        assert_eq!(rec.pending["press-02"], (11, vec![(1, 2)]));
        let got = s.read_from(0, 10).unwrap();
        let keys: Vec<u64> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 2]);
        assert_eq!(got[0].1, record(&expected[1], 1));
        assert_eq!(got[1].1, record(&expected[2], 2));
        assert_eq!(got[1].1.batch().unwrap(), expected[2]);
        assert_eq!(s.bytes(), got.iter().map(|(_, r)| r.size()).sum::<u64>());

        assert_eq!(s.next_key().unwrap(), 3);
        let more = record(&expected[0], 3);
        assert!(s.reserve(more.size()));
        s.commit(&[(3, &more)], &[1]).unwrap();
    }
    let (s, rec) = Spool::open(dir, 1 << 30).unwrap();
    assert_eq!(rec.records, 2);
    let keys: Vec<u64> = s
        .read_from(0, 10)
        .unwrap()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(keys, [2, 3]);
}

#[test]
fn spool_written_by_release_0_1_0_opens_with_everything_in_it() {
    let tmp = copy_fixture();
    assert_eq!(
        format_of(tmp.path()),
        Some(1),
        "the fixture records format 1"
    );
    assert_fixture_contents(tmp.path());
    assert_eq!(format_of(tmp.path()), Some(spool::FORMAT));
}

#[test]
fn spool_without_a_recorded_format_is_read_as_format_1_and_stamped() {
    let tmp = copy_fixture();
    set_format(tmp.path(), None);
    assert_eq!(format_of(tmp.path()), None);
    assert_fixture_contents(tmp.path());
    assert_eq!(format_of(tmp.path()), Some(spool::FORMAT));
}

#[test]
fn spool_of_a_newer_format_is_refused_untouched_with_what_to_do() {
    let tmp = copy_fixture();
    set_format(tmp.path(), Some(spool::FORMAT + 1));
    let file = tmp.path().join(spool::FILE_NAME);
    let before = std::fs::read(&file).unwrap();

    let err = Spool::open(tmp.path(), 1 << 30).unwrap_err();
    assert!(
        matches!(err, SpoolError::NewerFormat { found, .. } if found == spool::FORMAT + 1),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was modified"
    );

    // What an operator sees from the binary.
    let out = Command::new(GATEWAY)
        .args(["spool", "export", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "written by a newer breakwater-gateway",
        "Install the newer version again",
        "move the file aside",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in {stderr}");
    }
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was modified"
    );
}
